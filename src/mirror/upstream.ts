import type { Dispatcher } from 'undici';
import { Agent } from '../util/undici.js';
import { DfError } from '../errors.js';

export interface UpstreamOptions {
  /** Registries reached over plain HTTP (host[:port], lowercase); `plainHttp` for every registry. */
  insecure?: string[];
  plainHttp?: boolean;
  timeoutMs?: number;
  userAgent?: string;
  dispatcher?: Dispatcher;
}

export interface UpstreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

/** Request headers an engine's pull may carry that the registry needs; everything else stays here. */
const FORWARDED = ['authorization', 'accept', 'range', 'if-none-match'];
const MAX_REDIRECTS = 5;

/**
 * Requests to the upstream registry on behalf of an engine, with the engine's own credentials passed
 * through unchanged (the mirror never adds access the engine does not have). Redirects (blob storage) are
 * followed; Authorization goes only to the registry's own origin.
 */
export class Upstream {
  private readonly dispatcher: Dispatcher;
  private readonly owns: boolean;
  private readonly insecure: Set<string>;
  private readonly plainHttp: boolean;
  private readonly userAgent: string;

  constructor(opts: UpstreamOptions = {}) {
    const timeout = opts.timeoutMs ?? 30_000;
    this.owns = !opts.dispatcher;
    this.dispatcher =
      opts.dispatcher ??
      new Agent({ connections: 64, keepAliveTimeout: 30_000, headersTimeout: timeout, bodyTimeout: timeout });
    this.insecure = new Set((opts.insecure ?? []).map((h) => h.toLowerCase()));
    this.plainHttp = opts.plainHttp ?? false;
    this.userAgent = opts.userAgent ?? 'dfnode-mirror/0.1';
  }

  baseUrl(registry: string): string {
    const plain = this.plainHttp || this.insecure.has(registry.toLowerCase());
    return `${plain ? 'http' : 'https'}://${registry}`;
  }

  /**
   * Sends GET or HEAD `path` (`/v2/...`) to `registry` with the forwardable headers of `incoming`. Throws a
   * DfError (NETWORK/TIMEOUT) when the registry cannot be reached; any HTTP status is returned.
   */
  async request(
    method: 'GET' | 'HEAD',
    registry: string,
    path: string,
    incoming: Record<string, string | string[] | undefined>,
    signal?: AbortSignal,
  ): Promise<UpstreamResponse> {
    const headers: Record<string, string> = { 'user-agent': this.userAgent };
    for (const h of FORWARDED) {
      const v = incoming[h];
      if (typeof v === 'string') headers[h] = v;
    }
    let url = new URL(path, this.baseUrl(registry));
    const origin = url.origin;
    for (let hop = 0; ; hop++) {
      if (url.origin !== origin) delete headers.authorization;
      let res: Dispatcher.ResponseData;
      try {
        res = await this.dispatcher.request({
          origin: url.origin,
          path: url.pathname + url.search,
          method,
          headers,
          signal,
        });
      } catch (err) {
        if (signal?.aborted) throw DfError.aborted('mirror request cancelled', { cause: err });
        const e = err as { code?: string; message?: string };
        const timeout = /TIMEOUT/i.test(e?.code ?? '');
        throw new DfError(
          timeout ? 'TIMEOUT' : 'NETWORK',
          `registry ${registry} unreachable: ${e?.message ?? String(err)}`,
          { cause: err },
        );
      }
      const loc = res.headers.location;
      if ([301, 302, 303, 307, 308].includes(res.statusCode) && typeof loc === 'string') {
        res.body.destroy();
        if (hop >= MAX_REDIRECTS) throw new DfError('REGISTRY', `registry ${registry}: too many redirects`);
        url = new URL(loc, url);
        if (url.protocol !== 'https:' && url.protocol !== 'http:')
          throw new DfError(
            'REGISTRY',
            `registry ${registry}: redirect to unsupported URL scheme ${url.protocol}`,
          );
        continue;
      }
      return { status: res.statusCode, headers: res.headers, body: res.body };
    }
  }

  async close(): Promise<void> {
    if (this.owns) await this.dispatcher.close();
  }
}
