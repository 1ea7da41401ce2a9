import { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { Agent } from '../util/undici.js';
import { DfError } from '../errors.js';
import { backoff } from '../util/backoff.js';
import { MAX_RETRY_AFTER_MS, parseRetryAfter, retryAfterText } from './retry-after.js';
import { keepAliveTimers, sleep as sleepFor } from '../util/timers.js';
import { silentLogger, type Logger } from '../log.js';
import { authFailedMessage, RegistryAuth, type RepoScope } from './auth.js';
import type { CredentialProvider } from './credentials.js';
import type { ImageReference } from './reference.js';
import { parseWwwAuthenticate } from './www-authenticate.js';

export interface TransportOptions {
  plainHttp?: boolean;
  insecure?: string[];
  credentials?: CredentialProvider;
  timeoutMs?: number;
  retries?: number;
  retryBaseMs?: number;
  retryMaxMs?: number;
  logger?: Logger;
  userAgent?: string;
  dispatcher?: Dispatcher;
}

type Method = 'GET' | 'HEAD' | 'PUT' | 'POST' | 'PATCH' | 'DELETE';

/** One logical registry request; `send` adds auth, redirects, retries and error mapping. */
export interface SendRequest {
  method: Method;
  ref: ImageReference;
  /** A path under the registry (`/v2/...`) or an absolute URL (an upload location). */
  url: string;
  /** Access needed: pull on `ref.repository`, or pull,push; plus pull on other repositories (mount sources). */
  push?: boolean;
  extraPull?: string[];
  headers?: Record<string, string>;
  /** Called for each attempt, so that a retry sends the body again. */
  body?: () => Buffer | string | Readable | undefined | Promise<Buffer | string | Readable | undefined>;
  /** Statuses handed to `handle`; anything else becomes an error. */
  ok: number[];
  /** Thing named in a 404 error ("manifest x", "blob sha256:..."); without it 404 is a REGISTRY error. */
  what: string;
  /** Retry on 5xx/429/network errors/timeouts (default true). */
  retry?: boolean;
  followRedirects?: boolean;
  signal?: AbortSignal;
  /** Sends this request through another dispatcher than the client's (e.g. a pipelined connection). */
  dispatcher?: Dispatcher;
}

export interface SendResponse {
  status: number;
  headers: Dispatcher.ResponseData['headers'];
  body: Dispatcher.ResponseData['body'];
  /** The URL that answered (after redirects). */
  url: URL;
  /** The headers of the request it answered (its Authorization, if one was sent). */
  sent: Record<string, string>;
  /** `url` is on the registry's own origin (no redirect to another host). */
  sameOrigin: boolean;
}

const MAX_REDIRECTS = 5;
const noop = (): void => undefined;
const MAX_ERROR_BODY = 64 * 1024;

export function header(headers: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
}

/**
 * A URL for logs and error details: without its query string (pre-signed storage URLs carry their
 * signature and credentials there) and without user info.
 */
export function redactedUrl(url: URL): string {
  return `${url.origin}${url.pathname}${url.search ? '?<redacted>' : ''}`;
}

function isRetryable(err: unknown): boolean {
  if (!(err instanceof DfError)) return false;
  if (err.code === 'NETWORK' || err.code === 'TIMEOUT') return true;
  return err.details.retryable === true;
}

/** Reads a registry error body (`{"errors":[{"code","message","detail"}]}`) into one line. */
async function errorMessage(body: Dispatcher.ResponseData['body']): Promise<string> {
  let text = '';
  try {
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of body) {
      chunks.push(c as Buffer);
      n += (c as Buffer).length;
      if (n > MAX_ERROR_BODY) break;
    }
    text = Buffer.concat(chunks).toString('utf8', 0, Math.min(n, MAX_ERROR_BODY));
  } catch {
    return '';
  } finally {
    body.destroy();
  }
  try {
    const j = JSON.parse(text) as { errors?: { code?: string; message?: string; detail?: unknown }[] };
    if (Array.isArray(j.errors) && j.errors.length) {
      return j.errors
        .map(
          (e) =>
            [e.code, e.message].filter(Boolean).join(': ') +
            (e.detail ? ` (${JSON.stringify(e.detail)})` : ''),
        )
        .join('; ');
    }
  } catch {
    // not JSON: fall through to the raw text
  }
  return text.trim().slice(0, 300);
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> => sleepFor(keepAliveTimers, ms, signal);

/**
 * The request engine under RegistryClient: one undici dispatcher, anonymous-first auth, redirects
 * (credentials only to the registry's own origin), retries with backoff and jitter, error mapping.
 */
export class RegistryTransport {
  readonly auth: RegistryAuth;
  readonly retries: number;
  readonly logger: Logger;
  private readonly dispatcher: Dispatcher;
  private readonly ownsDispatcher: boolean;
  private readonly plainHttp: boolean;
  private readonly insecure: Set<string>;
  readonly timeoutMs: number;
  private readonly retryBaseMs: number;
  private readonly retryMaxMs: number;
  private readonly userAgent: string;

  constructor(opts: TransportOptions = {}) {
    this.plainHttp = opts.plainHttp ?? false;
    this.insecure = new Set((opts.insecure ?? []).map((h) => h.toLowerCase()));
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.retries = opts.retries ?? 4;
    this.retryBaseMs = opts.retryBaseMs ?? 250;
    this.retryMaxMs = opts.retryMaxMs ?? 10_000;
    this.logger = (opts.logger ?? silentLogger).child({ component: 'registry' });
    this.userAgent = opts.userAgent ?? 'dfnode/0.1';
    this.ownsDispatcher = !opts.dispatcher;
    this.dispatcher =
      opts.dispatcher ??
      new Agent({
        connections: 32,
        keepAliveTimeout: 30_000,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      });
    this.auth = new RegistryAuth({
      dispatcher: this.dispatcher,
      credentials: opts.credentials,
      timeoutMs: this.timeoutMs,
      userAgent: this.userAgent,
      logger: this.logger,
    });
  }

  /** `http://` or `https://` + host for a registry. */
  baseUrl(registry: string): string {
    const plain = this.plainHttp || this.insecure.has(registry.toLowerCase());
    return `${plain ? 'http' : 'https'}://${registry}`;
  }

  async close(): Promise<void> {
    if (this.ownsDispatcher) await this.dispatcher.close();
  }

  backoff(attempt: number): number {
    return backoff(attempt, this.retryBaseMs, this.retryMaxMs, 'equal');
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return sleep(ms, signal);
  }

  isRetryable(err: unknown): boolean {
    return isRetryable(err);
  }

  /**
   * Sends a request and hands an accepted response to `handle`, which must consume or destroy the body.
   * Errors from `handle` that are retryable (network, timeout) retry the whole request.
   */
  async send<T>(req: SendRequest, handle: (res: SendResponse) => Promise<T>): Promise<T> {
    const retries = req.retry === false ? 0 : this.retries;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.attempt(req, handle);
      } catch (err) {
        if (req.signal?.aborted)
          throw err instanceof DfError && err.code === 'ABORTED'
            ? err
            : DfError.aborted(undefined, { cause: err });
        if (!isRetryable(err) || attempt >= retries) {
          if (attempt > 0 && err instanceof DfError) err.message += ` (after ${attempt + 1} attempts)`;
          throw err;
        }
        const asked = err instanceof DfError ? err.details.retryAfterMs : undefined;
        const delay = Math.max(this.backoff(attempt), typeof asked === 'number' ? asked : 0);
        this.logger.debug(
          { err: (err as Error).message, attempt, delay },
          'registry request failed; retrying',
        );
        await sleep(delay, req.signal);
      }
    }
  }

  private scopes(req: SendRequest): RepoScope[] {
    const s: RepoScope[] = [{ repository: req.ref.repository, actions: req.push ? 'pull,push' : 'pull' }];
    for (const r of req.extraPull ?? [])
      if (r !== req.ref.repository) s.push({ repository: r, actions: 'pull' });
    return s;
  }

  private async attempt<T>(req: SendRequest, handle: (res: SendResponse) => Promise<T>): Promise<T> {
    const host = req.ref.registry;
    const registryOrigin = new URL(this.baseUrl(host)).origin;
    let url = new URL(req.url, this.baseUrl(host));
    const scopes = this.scopes(req);
    let authRetried = false;
    let redirects = 0;
    for (;;) {
      const sameOrigin = url.origin === registryOrigin;
      const headers: Record<string, string> = { 'user-agent': this.userAgent, ...req.headers };
      let sentAuth = false;
      if (sameOrigin) {
        const a = await this.auth.authorization(host, scopes, req.signal);
        if (a) {
          headers.authorization = a;
          sentAuth = true;
        }
      }
      const method = redirects > 0 && req.method !== 'HEAD' ? 'GET' : req.method;
      const body = redirects === 0 && req.body ? await req.body() : undefined;
      const res = await this.dispatch(url, method, headers, body, req);
      // Bodies destroyed before their end emit an abort error; whoever reads the body reports failures.
      res.body.on('error', noop);
      const status = res.statusCode;

      if (status === 401 && sameOrigin) {
        const challenge = res.headers['www-authenticate'];
        const why = await errorMessage(res.body);
        if (!authRetried && this.auth.onChallenge(host, challenge, scopes)) {
          authRetried = true;
          continue;
        }
        const insufficient = parseWwwAuthenticate(challenge).some(
          (c) => c.params.error === 'insufficient_scope',
        );
        let msg: string;
        if (!sentAuth && !authRetried) {
          msg = `${host} refused anonymous access to ${req.ref.repository} without a usable challenge: ${why}`;
        } else if (insufficient && !(await this.auth.credential(host, req.signal))) {
          msg = `${host} requires a login for ${req.ref.repository} and no credentials were found: docker login ${host} or --creds`;
        } else if (insufficient) {
          msg =
            `${host} denied ${req.push ? 'push' : 'pull'} access to ${req.ref.repository} for these credentials ` +
            `(insufficient scope): check credentials and permissions (docker login ${host} or --creds)`;
        } else {
          msg = authFailedMessage(host, req.ref.repository) + (why ? ` (registry said: ${why})` : '');
        }
        throw new DfError('UNAUTHORIZED', msg, { details: { host, repository: req.ref.repository, status } });
      }
      if (req.followRedirects && status >= 300 && status < 400 && status !== 304) {
        const loc = header(res.headers, 'location');
        await res.body.dump();
        if (!loc)
          throw new DfError('REGISTRY', `${url.host} answered ${status} without a Location for ${req.what}`);
        if (++redirects > MAX_REDIRECTS) throw new DfError('REGISTRY', `too many redirects for ${req.what}`);
        url = new URL(loc, url);
        continue;
      }
      if (req.ok.includes(status))
        return handle({ status, headers: res.headers, body: res.body, url, sent: headers, sameOrigin });

      const why = await errorMessage(res.body);
      const details = { host: url.host, status, method: req.method, url: redactedUrl(url) };
      if (status === 404) {
        throw DfError.notFound(`${req.what} not found${why ? ` (${why})` : ''}`, { details });
      }
      if (status === 403) {
        throw new DfError(
          'FORBIDDEN',
          `${url.host} denied ${req.method} access to ${req.what}${why ? `: ${why}` : ''}`,
          {
            details,
          },
        );
      }
      const retryable = status >= 500 || status === 429 || status === 408;
      // a rate limit or an outage may say when to come back: waited for up to a minute, beyond that the
      // request fails at once and says when
      const after = retryable ? parseRetryAfter(res.headers['retry-after']) : undefined;
      const later = after !== undefined && after > MAX_RETRY_AFTER_MS;
      throw new DfError(
        'REGISTRY',
        `${url.host} answered ${status} to ${req.method} ${url.pathname} (${req.what})${why ? `: ${why}` : ''}${
          after !== undefined ? `; it asks to retry after ${retryAfterText(after)}` : ''
        }`,
        { details: { ...details, retryable: retryable && !later, retryAfterMs: after } },
      );
    }
  }

  private async dispatch(
    url: URL,
    method: Method,
    headers: Record<string, string>,
    body: Buffer | string | Readable | undefined,
    req: SendRequest,
  ): Promise<Dispatcher.ResponseData> {
    // The timer covers the wait for headers; body stalls are bounded by undici's bodyTimeout.
    // Streamed uploads may take long: undici's headersTimeout, refreshed as the body is written, bounds them.
    const ctl = new AbortController();
    const timer = body instanceof Readable ? undefined : setTimeout(() => ctl.abort(), this.timeoutMs);
    const onAbort = (): void => ctl.abort();
    req.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      return await (req.dispatcher ?? this.dispatcher).request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method,
        headers,
        body: body as Dispatcher.DispatchOptions['body'],
        signal: ctl.signal,
        headersTimeout: this.timeoutMs,
        bodyTimeout: this.timeoutMs,
      });
    } catch (err) {
      if (body instanceof Readable) body.destroy();
      if (req.signal?.aborted)
        throw DfError.aborted(`${method} ${url.host}${url.pathname} aborted`, { cause: err });
      if (ctl.signal.aborted) {
        throw DfError.timeout(
          `${method} ${url.host}${url.pathname} (${req.what}) got no answer within ${this.timeoutMs} ms`,
          {
            details: { host: url.host },
          },
        );
      }
      const e = DfError.from(err, `${method} ${url.host}${url.pathname} (${req.what})`);
      if (e.code === 'INTERNAL' && /socket|other side closed|ECONN|EPIPE/i.test(e.message)) {
        throw new DfError('NETWORK', e.message, { cause: err, details: { host: url.host } });
      }
      throw e;
    } finally {
      clearTimeout(timer);
      req.signal?.removeEventListener('abort', onAbort);
    }
  }
}
