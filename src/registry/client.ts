import { Readable } from 'node:stream';
import { Agent, type Dispatcher } from 'undici';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { authFailedMessage, RegistryAuth, type RepoScope } from './auth.js';
import { pushBlob, type PushBlobOptions, type PushResult } from './blob-upload.js';
import type { CredentialProvider } from './credentials.js';
import { MANIFEST_ACCEPT } from './media-types.js';
import { parseWwwAuthenticate } from './www-authenticate.js';
import { RegistryRangeReader } from './range-reader.js';
import type { ImageReference } from './reference.js';
import { computeDigest, digestAlgorithm, HashingStream, validateDigest } from './digest.js';

export interface RegistryClientOptions {
  /** Talk plain HTTP to every registry. */
  plainHttp?: boolean;
  /** Hosts (`host[:port]`) spoken to over plain HTTP. */
  insecure?: string[];
  credentials?: CredentialProvider;
  /** Time limit for a request until its headers arrive, and for each stall while its body streams. */
  timeoutMs?: number;
  /** Retries on 5xx, 429, network errors and timeouts. */
  retries?: number;
  /** First backoff delay; doubles on each retry, with full jitter. */
  retryBaseMs?: number;
  /** Longest backoff delay. */
  retryMaxMs?: number;
  /** Chunk size for blob uploads; 0 uploads monolithically. */
  uploadChunkSize?: number;
  logger?: Logger;
  userAgent?: string;
  /** undici dispatcher; by default the client owns one Agent (closed by `close()`). */
  dispatcher?: Dispatcher;
}

export interface RequestOptions {
  signal?: AbortSignal;
}

export interface Manifest {
  mediaType: string;
  digest: string;
  bytes: Buffer;
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
}

export interface SendResponse {
  status: number;
  headers: Dispatcher.ResponseData['headers'];
  body: Dispatcher.ResponseData['body'];
  /** The URL that answered (after redirects). */
  url: URL;
}

const MAX_REDIRECTS = 5;
const noop = (): void => undefined;
const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const MAX_ERROR_BODY = 64 * 1024;

export function header(headers: Dispatcher.ResponseData['headers'], name: string): string | undefined {
  const v = headers[name];
  return Array.isArray(v) ? v[0] : v;
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

/** Reads a body fully, up to `limit` bytes. */
async function readBody(body: Dispatcher.ResponseData['body'], limit: number, what: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += (c as Buffer).length;
    if (n > limit) {
      body.destroy();
      throw new DfError('REGISTRY', `${what} is larger than ${limit} bytes`);
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks, n);
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(DfError.aborted());
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(DfError.aborted());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });

/**
 * OCI distribution client on undici: manifests, blobs (whole, ranges, suffix), uploads with
 * cross-repository mounts, Basic and Bearer auth, redirects to storage, retries with backoff.
 */
export class RegistryClient {
  readonly auth: RegistryAuth;
  readonly uploadChunkSize: number;
  readonly retries: number;
  readonly logger: Logger;
  private readonly dispatcher: Dispatcher;
  private readonly ownsDispatcher: boolean;
  private readonly plainHttp: boolean;
  private readonly insecure: Set<string>;
  private readonly timeoutMs: number;
  private readonly retryBaseMs: number;
  private readonly retryMaxMs: number;
  private readonly userAgent: string;

  constructor(opts: RegistryClientOptions = {}) {
    this.plainHttp = opts.plainHttp ?? false;
    this.insecure = new Set((opts.insecure ?? []).map((h) => h.toLowerCase()));
    this.timeoutMs = opts.timeoutMs ?? 30_000;
    this.retries = opts.retries ?? 4;
    this.retryBaseMs = opts.retryBaseMs ?? 250;
    this.retryMaxMs = opts.retryMaxMs ?? 10_000;
    this.uploadChunkSize = opts.uploadChunkSize ?? 0;
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

  // ---- manifests ----

  async getManifest(ref: ImageReference, opts: RequestOptions = {}): Promise<Manifest> {
    const what = `manifest ${ref.toString()}`;
    return this.send(
      {
        method: 'GET',
        ref,
        url: `/v2/${ref.repository}/manifests/${ref.reference}`,
        headers: { accept: MANIFEST_ACCEPT },
        ok: [200],
        what,
        signal: opts.signal,
      },
      async (res) => {
        const bytes = await readBody(res.body, MAX_MANIFEST_BYTES, what);
        const algo = ref.digest ? digestAlgorithm(ref.digest) : 'sha256';
        const digest = computeDigest(bytes, algo);
        if (ref.digest && digest !== ref.digest) throw DfError.digestMismatch(what, ref.digest, digest);
        let mediaType = (header(res.headers, 'content-type') ?? '').split(';')[0]!.trim();
        if (!mediaType || mediaType === 'application/json' || mediaType === 'text/plain') {
          try {
            mediaType = (JSON.parse(bytes.toString('utf8')) as { mediaType?: string }).mediaType ?? mediaType;
          } catch {
            throw new DfError('REGISTRY', `${what}: the registry sent a manifest that is not JSON`);
          }
        }
        return { mediaType, digest, bytes };
      },
    );
  }

  async headManifest(
    ref: ImageReference,
    opts: RequestOptions = {},
  ): Promise<{ digest: string; mediaType: string; size: number } | undefined> {
    const res = await this.send(
      {
        method: 'HEAD',
        ref,
        url: `/v2/${ref.repository}/manifests/${ref.reference}`,
        headers: { accept: MANIFEST_ACCEPT },
        ok: [200, 404],
        what: `manifest ${ref.toString()}`,
        signal: opts.signal,
      },
      async (r) => {
        await r.body.dump();
        return r;
      },
    );
    if (res.status === 404) return undefined;
    const digest = header(res.headers, 'docker-content-digest') ?? ref.digest;
    const mediaType = (header(res.headers, 'content-type') ?? '').split(';')[0]!.trim();
    const size = Number(header(res.headers, 'content-length') ?? NaN);
    if (!digest || !Number.isFinite(size)) {
      // Some registries leave these out of HEAD answers: fall back to a GET.
      const m = await this.getManifest(ref, opts);
      return { digest: m.digest, mediaType: m.mediaType, size: m.bytes.length };
    }
    return { digest, mediaType, size };
  }

  /** Pushes a manifest under `ref`'s tag (or digest); returns its digest. */
  async putManifest(
    ref: ImageReference,
    bytes: Buffer,
    mediaType: string,
    opts: RequestOptions = {},
  ): Promise<string> {
    const digest = computeDigest(bytes, ref.digest ? digestAlgorithm(ref.digest) : 'sha256');
    if (ref.digest && ref.digest !== digest) {
      throw DfError.invalidArgument(
        `manifest for ${ref.toString()} has digest ${digest}, not the one in the reference`,
      );
    }
    return this.send(
      {
        method: 'PUT',
        ref,
        url: `/v2/${ref.repository}/manifests/${ref.reference}`,
        push: true,
        headers: { 'content-type': mediaType, 'content-length': String(bytes.length) },
        body: () => bytes,
        ok: [200, 201],
        what: `manifest ${ref.toString()}`,
        signal: opts.signal,
      },
      async (res) => {
        await res.body.dump();
        const got = header(res.headers, 'docker-content-digest');
        if (got && got !== digest)
          throw DfError.digestMismatch(`pushed manifest ${ref.toString()}`, digest, got);
        return digest;
      },
    );
  }

  // ---- blobs ----

  /** Size of a blob, or undefined when the repository does not have it. */
  async headBlob(
    ref: ImageReference,
    digest: string,
    opts: RequestOptions & { push?: boolean } = {},
  ): Promise<number | undefined> {
    validateDigest(digest);
    const res = await this.send(
      {
        method: 'HEAD',
        ref,
        url: `/v2/${ref.repository}/blobs/${digest}`,
        push: opts.push,
        ok: [200, 404],
        what: `blob ${digest} in ${ref.repoString}`,
        followRedirects: true,
        signal: opts.signal,
      },
      async (r) => {
        await r.body.dump();
        return r;
      },
    );
    if (res.status === 404) return undefined;
    const size = Number(header(res.headers, 'content-length'));
    if (!Number.isFinite(size))
      throw new DfError('REGISTRY', `${ref.registry} sent no size for blob ${digest}`);
    return size;
  }

  /**
   * The whole blob as a stream. With `verify` (default), the stream fails with DIGEST_MISMATCH at its
   * end when the bytes do not match the digest. Failures after the stream is returned are not retried.
   */
  async getBlob(
    ref: ImageReference,
    digest: string,
    opts: RequestOptions & { verify?: boolean } = {},
  ): Promise<{ size: number; stream: Readable }> {
    validateDigest(digest);
    return this.send(
      {
        method: 'GET',
        ref,
        url: `/v2/${ref.repository}/blobs/${digest}`,
        ok: [200],
        what: `blob ${digest} in ${ref.repoString}`,
        followRedirects: true,
        signal: opts.signal,
      },
      async (res) => {
        const size = Number(header(res.headers, 'content-length') ?? NaN);
        const body = res.body as unknown as Readable;
        if (opts.verify === false) return { size, stream: body };
        const hashing = new HashingStream(digest, `blob ${digest} from ${ref.repoString}`, size);
        body.on('error', (err) =>
          hashing.destroy(DfError.from(err, `read blob ${digest} from ${ref.registry}`)),
        );
        return { size, stream: body.pipe(hashing) };
      },
    );
  }

  /** Exactly `length` bytes at `offset` of a blob, with one HTTP range request. */
  async getBlobRange(
    ref: ImageReference,
    digest: string,
    offset: number,
    length: number,
    opts: RequestOptions = {},
  ): Promise<Buffer> {
    validateDigest(digest);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw DfError.invalidArgument(`bad range ${offset}+${length} for blob ${digest}`);
    }
    if (length === 0) return Buffer.alloc(0);
    const what = `blob ${digest} in ${ref.repoString}`;
    const end = offset + length - 1;
    return this.send(
      {
        method: 'GET',
        ref,
        url: `/v2/${ref.repository}/blobs/${digest}`,
        headers: { range: `bytes=${offset}-${end}` },
        ok: [200, 206, 416],
        what,
        followRedirects: true,
        signal: opts.signal,
      },
      async (res) => {
        if (res.status === 416) {
          await res.body.dump();
          throw DfError.corrupt(
            `range ${offset}-${end} is past the end of ${what} (${header(res.headers, 'content-range') ?? 'size unknown'})`,
          );
        }
        if (res.status === 200) {
          // The server ignored the range: skip to the offset, keep what we need, drop the rest.
          return sliceStream(res.body, offset, length, what);
        }
        const cr = parseContentRange(header(res.headers, 'content-range'));
        if (!cr || cr.start !== offset) {
          res.body.destroy();
          throw new DfError(
            'REGISTRY',
            `${ref.registry} answered range ${offset}-${end} of ${what} with Content-Range "${header(res.headers, 'content-range')}"`,
          );
        }
        if (cr.end !== end) {
          res.body.destroy();
          throw DfError.corrupt(
            `range ${offset}-${end} is past the end of ${what} (size ${cr.size ?? 'unknown'})`,
          );
        }
        const data = await readBody(res.body, length, what);
        if (data.length !== length)
          throw new DfError('NETWORK', `short range read of ${what}: ${data.length} of ${length} bytes`);
        return data;
      },
    );
  }

  /** The last `length` bytes of a blob (or all of it when shorter) and its size, with a suffix range. */
  async getBlobTail(
    ref: ImageReference,
    digest: string,
    length: number,
    opts: RequestOptions = {},
  ): Promise<{ data: Buffer; size: number }> {
    validateDigest(digest);
    if (!Number.isSafeInteger(length) || length <= 0)
      throw DfError.invalidArgument(`bad suffix length ${length}`);
    const what = `blob ${digest} in ${ref.repoString}`;
    return this.send(
      {
        method: 'GET',
        ref,
        url: `/v2/${ref.repository}/blobs/${digest}`,
        headers: { range: `bytes=-${length}` },
        ok: [200, 206],
        what,
        followRedirects: true,
        signal: opts.signal,
      },
      async (res) => {
        if (res.status === 200) return tailOfStream(res.body, length);
        const cr = parseContentRange(header(res.headers, 'content-range'));
        if (!cr || cr.size === undefined || cr.end !== cr.size - 1) {
          res.body.destroy();
          throw new DfError(
            'REGISTRY',
            `${ref.registry} answered a suffix range of ${what} with Content-Range "${header(res.headers, 'content-range')}"`,
          );
        }
        const want = cr.end - cr.start + 1;
        const data = await readBody(res.body, want, what);
        if (data.length !== want)
          throw new DfError('NETWORK', `short suffix read of ${what}: ${data.length} of ${want} bytes`);
        return { data, size: cr.size };
      },
    );
  }

  rangeReader(ref: ImageReference, digest: string, size?: number): RegistryRangeReader {
    validateDigest(digest);
    return new RegistryRangeReader(this, ref, digest, size);
  }

  /**
   * Uploads a blob unless the repository has it: HEAD, then a cross-repository mount from `mountFrom`,
   * then a monolithic PUT or chunked PATCHes. A retry starts over with a fresh `open()`.
   */
  pushBlob(
    ref: ImageReference,
    digest: string,
    size: number,
    open: () => Readable | Promise<Readable>,
    opts: PushBlobOptions = {},
  ): Promise<PushResult> {
    validateDigest(digest);
    return pushBlob(this, ref, digest, size, open, opts);
  }

  /** Best-effort: abandon an upload session. */
  async deleteUpload(ref: ImageReference, location: string): Promise<void> {
    await this.send(
      {
        method: 'DELETE',
        ref,
        url: location,
        push: true,
        ok: [200, 202, 204, 404],
        what: 'upload',
        retry: false,
      },
      async (r) => void (await r.body.dump()),
    ).catch(() => undefined);
  }

  // ---- the request engine ----

  backoff(attempt: number): number {
    const cap = Math.min(this.retryMaxMs, this.retryBaseMs * 2 ** attempt);
    return Math.round(cap / 2 + (Math.random() * cap) / 2);
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
        const delay = this.backoff(attempt);
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
      if (req.ok.includes(status)) return handle({ status, headers: res.headers, body: res.body, url });

      const why = await errorMessage(res.body);
      const details = { host: url.host, status, method: req.method, url: url.toString() };
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
      throw new DfError(
        'REGISTRY',
        `${url.host} answered ${status} to ${req.method} ${url.pathname} (${req.what})${why ? `: ${why}` : ''}`,
        { details: { ...details, retryable } },
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
      return await this.dispatcher.request({
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

export function parseContentRange(
  v: string | undefined,
): { start: number; end: number; size?: number } | undefined {
  if (!v) return undefined;
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(v);
  if (!m) return undefined;
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start) return undefined;
  return { start, end, size: m[3] === '*' ? undefined : Number(m[3]) };
}

/** From a full-body answer: bytes [offset, offset+length), then the connection is dropped. */
async function sliceStream(
  body: Dispatcher.ResponseData['body'],
  offset: number,
  length: number,
  what: string,
): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let pos = 0;
  let got = 0;
  try {
    for await (const c of body) {
      const chunk = c as Buffer;
      const from = Math.max(0, offset - pos);
      pos += chunk.length;
      if (from >= chunk.length) continue;
      const n = Math.min(chunk.length - from, length - got);
      chunk.copy(out, got, from, from + n);
      got += n;
      if (got === length) break;
    }
  } finally {
    body.destroy();
  }
  if (got !== length)
    throw DfError.corrupt(`range ${offset}+${length} is past the end of ${what} (size ${pos})`);
  return out;
}

/** From a full-body answer: its last `length` bytes and its size. */
async function tailOfStream(
  body: Dispatcher.ResponseData['body'],
  length: number,
): Promise<{ data: Buffer; size: number }> {
  let kept: Buffer[] = [];
  let keptBytes = 0;
  let size = 0;
  for await (const c of body) {
    const chunk = c as Buffer;
    size += chunk.length;
    kept.push(chunk);
    keptBytes += chunk.length;
    while (kept.length > 1 && keptBytes - kept[0]!.length >= length) keptBytes -= kept.shift()!.length;
  }
  const all = Buffer.concat(kept, keptBytes);
  kept = [];
  const n = Math.min(length, all.length);
  return { data: all.subarray(all.length - n), size };
}
