import { Transform, type Readable, type TransformCallback } from 'node:stream';
import { DfError, isDfError } from '../errors.js';
import type { ImageReference } from './reference.js';
import { header, type RegistryTransport } from './transport.js';

export interface PushBlobOptions {
  /** Repositories on the same registry that may hold the blob (cross-repository mount). */
  mountFrom?: string[];
  /** Cumulative bytes sent by the current attempt (starts again from 0 when an upload restarts). */
  onProgress?: (bytes: number) => void;
  /** Overrides the client's uploadChunkSize (0 = monolithic). */
  chunkSize?: number;
  signal?: AbortSignal;
}

export type PushResult = 'exists' | 'mounted' | 'uploaded';

/** What an upload needs from a registry client (RegistryClient is one). */
export interface UploadClient {
  readonly transport: RegistryTransport;
  /** Default chunk size; 0 uploads monolithically. */
  readonly uploadChunkSize: number;
  /** Size of the blob in the repository, or undefined when it is not there. */
  headBlob(
    ref: ImageReference,
    digest: string,
    opts: { push?: boolean; signal?: AbortSignal },
  ): Promise<number | undefined>;
}

/** HEAD, mount, then upload; each retry starts a new upload session with a fresh `open()`. */
export async function pushBlob(
  client: UploadClient,
  ref: ImageReference,
  digest: string,
  size: number,
  open: () => Readable | Promise<Readable>,
  opts: PushBlobOptions,
): Promise<PushResult> {
  const t = client.transport;
  if (!Number.isSafeInteger(size) || size < 0)
    throw DfError.invalidArgument(`bad blob size ${size} for ${digest}`);
  // Ask with push access so that the token fetched here also covers the upload.
  const have = await client.headBlob(ref, digest, { push: true, signal: opts.signal });
  if (have !== undefined) {
    if (have !== size) {
      t.logger.warn({ digest, have, size }, 'registry holds the blob with another size than expected');
    }
    return 'exists';
  }
  for (let attempt = 0; ; attempt++) {
    try {
      return await uploadOnce(t, ref, digest, size, open, {
        ...opts,
        chunkSize: opts.chunkSize ?? client.uploadChunkSize,
      });
    } catch (err) {
      if (opts.signal?.aborted) throw DfError.aborted(`push of ${digest} aborted`, { cause: err });
      if (!t.isRetryable(err) || attempt >= t.retries) throw err;
      const delay = t.backoff(attempt);
      t.logger.debug(
        { digest, attempt, delay, err: (err as Error).message },
        'blob upload failed; starting over',
      );
      await t.sleep(delay, opts.signal);
    }
  }
}

async function uploadOnce(
  t: RegistryTransport,
  ref: ImageReference,
  digest: string,
  size: number,
  open: () => Readable | Promise<Readable>,
  opts: PushBlobOptions,
): Promise<PushResult> {
  const uploads = `/v2/${ref.repository}/blobs/uploads/`;
  const what = `upload of blob ${digest} to ${ref.repoString}`;
  let location: string | undefined;

  const mountFrom = (opts.mountFrom ?? []).filter((r) => r !== ref.repository);
  for (let i = 0; i < mountFrom.length; i++) {
    const from = mountFrom[i]!;
    try {
      const res = await t.send(
        {
          method: 'POST',
          ref,
          url: `${uploads}?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(from)}`,
          push: true,
          extraPull: [from],
          headers: { 'content-length': '0' },
          ok: [201, 202],
          what: `mount of blob ${digest} from ${from} into ${ref.repository}`,
          retry: false,
          signal: opts.signal,
        },
        async (r) => {
          await r.body.dump();
          return { status: r.status, location: header(r.headers, 'location') };
        },
      );
      if (res.status === 201) return 'mounted';
      // 202: the registry could not mount and opened an ordinary upload session instead.
      if (!res.location)
        throw new DfError('REGISTRY', `${ref.registry} opened an upload without a Location (${what})`);
      if (i < mountFrom.length - 1) await deleteUpload(t, ref, res.location);
      else location = res.location;
    } catch (err) {
      // No read access to the source (or mounts disabled): upload normally.
      if (!isDfError(err, 'UNAUTHORIZED') && !isDfError(err, 'FORBIDDEN') && !isDfError(err, 'NOT_FOUND'))
        throw err;
      t.logger.debug({ digest, from, err: (err as Error).message }, 'cross-repository mount refused');
    }
  }

  if (!location) {
    location = await t.send(
      {
        method: 'POST',
        ref,
        url: uploads,
        push: true,
        headers: { 'content-length': '0' },
        ok: [202],
        what,
        retry: false,
        signal: opts.signal,
      },
      async (r) => {
        await r.body.dump();
        const loc = header(r.headers, 'location');
        if (!loc)
          throw new DfError('REGISTRY', `${ref.registry} opened an upload without a Location (${what})`);
        return loc;
      },
    );
  }

  const chunkSize = opts.chunkSize ?? 0;
  if (chunkSize > 0 && size > chunkSize) {
    location = await uploadChunks(t, ref, location, digest, size, chunkSize, open, opts, what);
    await finish(t, ref, location, digest, () => undefined, 0, opts, what);
  } else {
    const body = async (): Promise<Readable> => {
      const src = await open();
      const counter = new CountingStream(size, digest, opts.onProgress);
      src.on('error', (err) => counter.destroy(err));
      return src.pipe(counter);
    };
    await finish(t, ref, location, digest, body, size, opts, what);
  }
  return 'uploaded';
}

/** Best-effort: abandon an upload session. */
export async function deleteUpload(
  t: RegistryTransport,
  ref: ImageReference,
  location: string,
): Promise<void> {
  await t
    .send(
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
    )
    .catch(() => undefined);
}

function withDigest(t: RegistryTransport, ref: ImageReference, location: string, digest: string): string {
  const u = new URL(location, t.baseUrl(ref.registry));
  u.searchParams.set('digest', digest);
  return u.toString();
}

async function finish(
  t: RegistryTransport,
  ref: ImageReference,
  location: string,
  digest: string,
  body: () => Readable | undefined | Promise<Readable | undefined>,
  length: number,
  opts: PushBlobOptions,
  what: string,
): Promise<void> {
  await t.send(
    {
      method: 'PUT',
      ref,
      url: withDigest(t, ref, location, digest),
      push: true,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(length) },
      body,
      ok: [201, 204],
      what,
      retry: false,
      signal: opts.signal,
    },
    async (r) => {
      await r.body.dump();
      const got = header(r.headers, 'docker-content-digest');
      if (got && got !== digest)
        throw DfError.digestMismatch(`uploaded blob in ${ref.repoString}`, digest, got);
    },
  );
}

async function uploadChunks(
  t: RegistryTransport,
  ref: ImageReference,
  location: string,
  digest: string,
  size: number,
  chunkSize: number,
  open: () => Readable | Promise<Readable>,
  opts: PushBlobOptions,
  what: string,
): Promise<string> {
  const src = await open();
  let offset = 0;
  try {
    for await (const chunk of fixedChunks(src, chunkSize)) {
      if (offset + chunk.length > size) break;
      const end = offset + chunk.length - 1;
      location = await t.send(
        {
          method: 'PATCH',
          ref,
          url: location,
          push: true,
          headers: {
            'content-type': 'application/octet-stream',
            'content-range': `${offset}-${end}`,
            'content-length': String(chunk.length),
          },
          body: () => chunk,
          ok: [202],
          what,
          retry: false,
          signal: opts.signal,
        },
        async (r) => {
          await r.body.dump();
          const range = header(r.headers, 'range');
          if (range && !new RegExp(`^(bytes=)?0-${end}$`).test(range)) {
            throw new DfError(
              'REGISTRY',
              `${ref.registry} acknowledged range ${range} after sending 0-${end} (${what})`,
              {
                details: { retryable: true },
              },
            );
          }
          return header(r.headers, 'location') ?? location;
        },
      );
      offset += chunk.length;
      opts.onProgress?.(offset);
    }
  } finally {
    src.destroy();
  }
  if (offset !== size) {
    throw DfError.invalidArgument(
      `blob ${digest}: the data source gave ${offset > size ? 'more than' : offset} bytes, expected ${size}`,
    );
  }
  return location;
}

/** Cuts a stream into buffers of exactly `size` bytes (the last one shorter). */
async function* fixedChunks(stream: Readable, size: number): AsyncGenerator<Buffer> {
  let parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    let buf = typeof c === 'string' ? Buffer.from(c) : (c as Buffer);
    while (buf.length > 0) {
      const take = Math.min(size - n, buf.length);
      parts.push(buf.subarray(0, take));
      n += take;
      buf = buf.subarray(take);
      if (n === size) {
        yield parts.length === 1 ? parts[0]! : Buffer.concat(parts, n);
        parts = [];
        n = 0;
      }
    }
  }
  if (n > 0) yield Buffer.concat(parts, n);
}

/** Counts bytes for progress and refuses more than the announced size. */
class CountingStream extends Transform {
  private bytes = 0;
  constructor(
    private readonly size: number,
    private readonly digest: string,
    private readonly onProgress?: (bytes: number) => void,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.bytes > this.size) {
      cb(
        DfError.invalidArgument(
          `blob ${this.digest}: the data source gave more than the expected ${this.size} bytes`,
        ),
      );
      return;
    }
    this.onProgress?.(this.bytes);
    cb(null, chunk);
  }

  override _flush(cb: TransformCallback): void {
    if (this.bytes !== this.size) {
      cb(
        DfError.invalidArgument(
          `blob ${this.digest}: the data source gave ${this.bytes} bytes, expected ${this.size}`,
        ),
      );
      return;
    }
    cb();
  }
}
