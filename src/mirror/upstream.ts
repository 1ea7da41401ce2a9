import { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { Agent } from '../util/undici.js';
import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { readBody } from '../registry/http-body.js';
import { AnonymousTokens } from './anonymous-tokens.js';
import { discard } from './origin.js';

export interface UpstreamOptions {
  /** Registries reached over plain HTTP (host[:port], lowercase); `plainHttp` for every registry. */
  insecure?: string[];
  plainHttp?: boolean;
  timeoutMs?: number;
  userAgent?: string;
  dispatcher?: Dispatcher;
  /**
   * A request without credentials that the registry answers 401 is sent again with an anonymous token
   * from the registry's token server, when it gives one (anonymous-tokens.ts). Default true.
   */
  anonymousTokens?: boolean;
  logger?: Logger;
}

export interface UpstreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
  /** The answer came with an anonymous token the mirror fetched (the engine sent no credentials). */
  anonymous?: boolean;
}

/** Largest 401 body kept while an anonymous token is tried (the engine gets it back if that fails). */
const MAX_CHALLENGE_BODY = 64 << 10;

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
  /** Anonymous tokens for engines that send no credentials (undefined: off). */
  readonly anonymous: AnonymousTokens | undefined;

  constructor(opts: UpstreamOptions = {}) {
    const timeout = opts.timeoutMs ?? 30_000;
    this.owns = !opts.dispatcher;
    this.dispatcher =
      opts.dispatcher ??
      new Agent({ connections: 64, keepAliveTimeout: 30_000, headersTimeout: timeout, bodyTimeout: timeout });
    this.insecure = new Set((opts.insecure ?? []).map((h) => h.toLowerCase()));
    this.plainHttp = opts.plainHttp ?? false;
    this.userAgent = opts.userAgent ?? 'dfnode-mirror/0.1';
    this.anonymous =
      opts.anonymousTokens === false
        ? undefined
        : new AnonymousTokens({
            dispatcher: this.dispatcher,
            timeoutMs: timeout,
            userAgent: this.userAgent,
            ...(opts.logger && { logger: opts.logger }),
          });
  }

  baseUrl(registry: string): string {
    const plain = this.plainHttp || this.insecure.has(registry.toLowerCase());
    return `${plain ? 'http' : 'https'}://${registry}`;
  }

  /**
   * Sends GET or HEAD `path` (`/v2/...`) to `registry` with the forwardable headers of `incoming`. Throws a
   * DfError (NETWORK/TIMEOUT) when the registry cannot be reached; any HTTP status is returned. A pull
   * without credentials goes with an anonymous token when the registry asks for one and its token server
   * gives one; when it does not, the registry's own 401 is returned, as the engine would have had it.
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
    const anon = headers.authorization === undefined ? this.anonymous : undefined;
    if (!anon) return this.send(method, registry, path, headers, signal);
    const withToken = (token: string) =>
      this.send(method, registry, path, { ...headers, authorization: `Bearer ${token}` }, signal);
    const held = anon.held(registry, path);
    if (held) {
      const up = await withToken(held);
      if (up.status !== 401 && up.status !== 403) return { ...up, anonymous: true };
      // expired or revoked early, or the repository is no longer public: asked as the engine asked
      discard(up.body);
      anon.drop(registry, path);
    }
    const up = await this.send(method, registry, path, headers, signal);
    if (up.status !== 401) return up;
    const ch = anon.challenge(registry, path, up.headers['www-authenticate']);
    if (!ch) return up;
    // the registry's challenge is what the engine gets when no anonymous token does it
    const body = await readBody(up.body, MAX_CHALLENGE_BODY, 'challenge').catch(() => Buffer.alloc(0));
    const challenge = (): UpstreamResponse => ({
      status: up.status,
      headers: up.headers,
      body: Readable.from([body]),
    });
    const token = await anon.token(ch, signal);
    if (!token) return challenge();
    const again = await withToken(token);
    if (again.status !== 401 && again.status !== 403) return { ...again, anonymous: true };
    discard(again.body);
    anon.refuse(ch.key);
    return challenge();
  }

  private async send(
    method: 'GET' | 'HEAD',
    registry: string,
    path: string,
    headers: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<UpstreamResponse> {
    headers = { ...headers };
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
