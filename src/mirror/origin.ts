import type { Dispatcher } from 'undici';
import { Agent } from '../util/undici.js';
import { DfError } from '../errors.js';
import { isHeaderName, isHeaderValue } from '../util/header-grammar.js';
import { readExactly } from '../util/read-into.js';
import type { BlobRef, BlockSource } from '../fetch/types.js';
import { childSignal, realTimers, type Timers } from '../util/timers.js';
import { transferTimeoutMs } from '../util/transfer-timeout.js';

/** Headers sent to an origin (`--header 'K: V'`): credentials among them, sent to that origin only. */
export type OriginHeaders = Record<string, string>;

/** Parses `--header` values (`Name: value`); a malformed one is a clear INVALID_ARGUMENT. */
export function parseHeaders(list: readonly string[]): OriginHeaders {
  const out: OriginHeaders = {};
  for (const h of list) {
    const i = h.indexOf(':');
    const name = i > 0 ? h.slice(0, i).trim() : '';
    if (!isHeaderName(name))
      throw DfError.invalidArgument(`--header ${JSON.stringify(h)}: expected 'Name: value'`);
    const value = h.slice(i + 1).trim();
    if (!isHeaderValue(value)) throw DfError.invalidArgument(`--header ${name}: the value has a line break`);
    out[name.toLowerCase()] = value;
  }
  return out;
}

/** An http(s) URL, or INVALID_ARGUMENT. */
export function originUrl(text: string): URL {
  let u: URL;
  try {
    u = new URL(text);
  } catch {
    throw DfError.invalidArgument(`${text} is not a URL (http://... or https://...)`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:')
    throw DfError.invalidArgument(`${text}: only http and https origins are supported`);
  if (u.username || u.password)
    throw DfError.invalidArgument(
      `${u.host}: put credentials in --header 'Authorization: ...', not in the URL`,
    );
  return u;
}

/**
 * What identifies a version of the file at a URL without reading it: the strong validator (ETag) or
 * Last-Modified, with the size. Empty when the origin gives neither (then nothing can be reused by URL).
 */
export function originValidator(headers: Record<string, string | string[] | undefined>): string {
  const one = (k: string) => {
    const v = headers[k];
    return typeof v === 'string' ? v : '';
  };
  const etag = one('etag');
  const lm = one('last-modified');
  if (!etag && !lm) return '';
  return `${etag}|${lm}|${one('content-length')}`;
}

/** Drops a response body unread (an error listener first: undici emits the abort as an error). */
export function discard(body: { on(ev: 'error', f: () => void): unknown; destroy(): unknown }): void {
  body.on('error', () => undefined);
  body.destroy();
}

export interface OriginResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

let agent: Agent | undefined;
/** The connection pool for origins (undici's default agent, made when first used). */
const originAgent = (): Agent => (agent ??= new Agent());

/**
 * One request to an origin (`GET` or `HEAD`, optionally a range), redirects not followed (an allowed
 * origin cannot send a seed elsewhere). A status other than 200/206 is a DfError saying what to do:
 * 401/403 (credentials: --header), 404, a redirect, anything else.
 */
export async function originRequest(
  url: URL,
  opts: { method?: 'GET' | 'HEAD'; headers?: OriginHeaders; range?: string; signal: AbortSignal },
): Promise<OriginResponse> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.range) headers.range = opts.range;
  let res: Dispatcher.ResponseData;
  try {
    res = await originAgent().request({
      origin: url.origin,
      path: `${url.pathname}${url.search}`,
      method: opts.method ?? 'GET',
      headers,
      signal: opts.signal,
    });
  } catch (err) {
    if (opts.signal.aborted && opts.signal.reason instanceof DfError) throw opts.signal.reason;
    throw new DfError('NETWORK', `origin ${url.host}: ${(err as Error).message}`);
  }
  if (res.statusCode === 200 || res.statusCode === 206) return { ...res, status: res.statusCode };
  discard(res.body);
  const where = `${url.origin}${url.pathname}`;
  if (res.statusCode === 401)
    throw new DfError(
      'UNAUTHORIZED',
      `origin answered 401 for ${where}: pass credentials with --header 'Authorization: ...'`,
    );
  if (res.statusCode === 403)
    throw new DfError('FORBIDDEN', `origin answered 403 for ${where}: the credentials do not give access`);
  if (res.statusCode === 404) throw DfError.notFound(`origin answered 404 for ${where}: no such file`);
  if (res.statusCode >= 300 && res.statusCode < 400)
    throw new DfError(
      'NETWORK',
      `origin answered ${res.statusCode} for ${where} (redirects are not followed); use the final URL: ${String(res.headers.location ?? '?')}`,
    );
  throw new DfError('NETWORK', `origin answered HTTP ${res.statusCode} for ${where}`);
}

export interface OriginSourceOptions {
  url: URL;
  headers: OriginHeaders;
  timeoutMs: number;
  timers?: Timers;
}

/**
 * The origin of a raw file as the last BlockSource of the chain (kind 'registry': the origin the P2P tier
 * saves): range requests with the user's headers, which go to this origin and nowhere else.
 */
export class OriginPieceSource implements BlockSource {
  readonly kind = 'registry' as const;
  readonly name: string;
  private readonly timers: Timers;

  constructor(private readonly opts: OriginSourceOptions) {
    this.name = `origin ${opts.url.host}`;
    this.timers = opts.timers ?? realTimers;
  }

  async fetch(blob: BlobRef, offset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    const what = `origin ${this.opts.url.host}`;
    const rq = childSignal(signal, transferTimeoutMs(this.opts.timeoutMs, length), this.timers, what);
    try {
      const res = await originRequest(this.opts.url, {
        headers: this.opts.headers,
        range: `bytes=${offset}-${offset + length - 1}`,
        signal: rq.signal,
      });
      const cr = String(res.headers['content-range'] ?? '');
      if (res.status !== 206 || !cr.startsWith(`bytes ${offset}-${offset + length - 1}/`)) {
        discard(res.body);
        throw new DfError(
          'UNSUPPORTED',
          `${what} did not answer the range ${offset}-${offset + length - 1} of ${blob.digest} (HTTP ${res.status}); it must support range requests`,
        );
      }
      return await readExactly(res.body, length, `${what}: ${offset}+${length}`);
    } catch (err) {
      if (rq.signal.aborted && rq.signal.reason instanceof DfError) throw rq.signal.reason;
      throw err;
    } finally {
      rq.dispose();
    }
  }
}
