import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { BodyHoldHooks } from '../util/rcv-lowat.js';
import { FastRanges } from './fast-ranges.js';
import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import type { RegistryAuth } from './auth.js';
import { deleteUpload, pushBlob, type PushBlobOptions, type PushResult } from './blob-upload.js';
import type { CredentialProvider } from './credentials.js';
import { computeDigest, digestAlgorithm, HashingStream, validateDigest } from './digest.js';
import {
  parseContentRange,
  readBody,
  readBodyInto,
  sliceStream,
  tailOfStream,
  type BodyProgress,
} from './http-body.js';
import { MANIFEST_ACCEPT } from './media-types.js';
import { RegistryRangeReader } from './range-reader.js';
import type { ImageReference } from './reference.js';
import { header, RegistryTransport, type SendRequest, type SendResponse } from './transport.js';

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

export interface RangeOptions extends RequestOptions, BodyHoldHooks {
  /** Hears of the range's bytes as they arrive (see readBodyInto). */
  progress?: BodyProgress;
  /** Another dispatcher than the client's for this request (a seed's pipelined registry connection). */
  dispatcher?: Dispatcher;
}

export interface Manifest {
  mediaType: string;
  digest: string;
  bytes: Buffer;
}

const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * OCI distribution client on undici: manifests, blobs (whole, ranges, suffix), uploads with
 * cross-repository mounts, Basic and Bearer auth, redirects to storage, retries with backoff.
 */
export class RegistryClient {
  readonly transport: RegistryTransport;
  readonly uploadChunkSize: number;
  /** Blob ranges on raw sockets where the full path showed the way (fast-ranges.ts); not with a caller's dispatcher. */
  readonly fastRanges: FastRanges | undefined;

  constructor(opts: RegistryClientOptions = {}) {
    this.transport = new RegistryTransport(opts);
    this.uploadChunkSize = opts.uploadChunkSize ?? 0;
    const off = process.env.DFNODE_REGISTRY_FAST_RANGES === '0';
    this.fastRanges = opts.dispatcher || off ? undefined : new FastRanges(this.transport.timeoutMs);
  }

  get auth(): RegistryAuth {
    return this.transport.auth;
  }
  get retries(): number {
    return this.transport.retries;
  }
  get logger(): Logger {
    return this.transport.logger;
  }

  /** `http://` or `https://` + host for a registry. */
  baseUrl(registry: string): string {
    return this.transport.baseUrl(registry);
  }

  async close(): Promise<void> {
    await this.fastRanges?.close();
    await this.transport.close();
  }

  send<T>(req: SendRequest, handle: (res: SendResponse) => Promise<T>): Promise<T> {
    return this.transport.send(req, handle);
  }
  backoff(attempt: number): number {
    return this.transport.backoff(attempt);
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return this.transport.sleep(ms, signal);
  }
  isRetryable(err: unknown): boolean {
    return this.transport.isRetryable(err);
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
    opts: RangeOptions = {},
  ): Promise<Buffer> {
    validateDigest(digest);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw DfError.invalidArgument(`bad range ${offset}+${length} for blob ${digest}`);
    }
    if (length === 0) return Buffer.alloc(0);
    const what = `blob ${digest} in ${ref.repoString}`;
    const end = offset + length - 1;
    const fast = opts.dispatcher ? undefined : this.fastRanges;
    const lane = `${ref.registry}/${ref.repository}@${digest}`;
    const quick = await fast?.get(lane, offset, length, opts);
    if (quick) return quick;
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
        dispatcher: opts.dispatcher,
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
        const data = await readBodyInto(res.body, length, what, opts.progress);
        if (data.length !== length)
          throw new DfError('NETWORK', `short range read of ${what}: ${data.length} of ${length} bytes`);
        if (res.sameOrigin) fast?.learn(lane, res.url, res.sent);
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
        if (want > length) {
          res.body.destroy();
          throw new DfError(
            'REGISTRY',
            `${ref.registry} answered a suffix range of ${length} bytes of ${what} with ${want} bytes ` +
              `(Content-Range "${header(res.headers, 'content-range')}"): not a registry this client can use`,
          );
        }
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
  deleteUpload(ref: ImageReference, location: string): Promise<void> {
    return deleteUpload(this.transport, ref, location);
  }
}
