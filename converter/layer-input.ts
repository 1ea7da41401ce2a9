import { createHash, type Hash } from 'node:crypto';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { DfError } from '../src/errors.js';
import { layerCompression, type Descriptor } from '../src/registry/oci.js';
import { readTar, type TarEntry } from './tar-reader.js';

export interface LayerInputResult {
  /** sha256 of the uncompressed tar (the layer's diff ID). */
  diffId: string;
  /** Bytes of the layer blob read. */
  compressedBytes: number;
  uncompressedBytes: number;
}

async function* tap(src: AsyncIterable<Buffer>, hash: Hash, count: (n: number) => void): AsyncGenerator<Buffer> {
  for await (const c of src) {
    hash.update(c);
    count(c.length);
    yield c;
  }
}

/**
 * Streams a layer blob into `onEntry` entry by entry: checks the media type first, gunzips when needed,
 * hashes the blob (digest check) and the tar (diff ID) on the way, and fails clearly on corrupt input.
 * The digest is checked at the end, so callers must discard what they built when this throws.
 */
export async function readLayer(
  input: Readable,
  layer: Descriptor,
  onEntry: (entry: TarEntry) => Promise<void>,
  opts: { signal?: AbortSignal; onBytesIn?: (n: number) => void } = {},
): Promise<LayerInputResult> {
  const compression = layerCompression(layer.mediaType);
  const blobHash = createHash('sha256');
  const diffHash = createHash('sha256');
  let compressedBytes = 0;
  let uncompressedBytes = 0;
  const what = `layer ${layer.digest}`;

  const hasher = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      blobHash.update(chunk);
      compressedBytes += chunk.length;
      opts.onBytesIn?.(chunk.length);
      cb(null, chunk);
    },
  });
  const consume = async (source: AsyncIterable<Buffer>) => {
    for await (const entry of readTar(tap(source, diffHash, (n) => (uncompressedBytes += n)))) {
      opts.signal?.throwIfAborted();
      await onEntry(entry);
    }
  };
  try {
    if (compression === 'gzip')
      await pipeline(input, hasher, createGunzip({ chunkSize: 256 * 1024 }), consume, { signal: opts.signal });
    else await pipeline(input, hasher, consume, { signal: opts.signal });
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    if (
      e?.code?.startsWith?.('Z_') ||
      /incorrect header check|invalid (block|distance|code|stored)|unexpected end of file/i.test(e?.message ?? '')
    )
      throw DfError.corrupt(`${what}: corrupt gzip data (${e.message}); the source image is damaged`, { cause: err });
    if (err instanceof DfError && err.code === 'CORRUPT')
      throw DfError.corrupt(`${what}: ${err.message}`, { cause: err });
    throw DfError.from(err, what);
  }
  const digest = 'sha256:' + blobHash.digest('hex');
  if (digest !== layer.digest) throw DfError.digestMismatch(what, layer.digest, digest);
  if (compressedBytes !== layer.size)
    throw DfError.corrupt(`${what}: size ${compressedBytes} does not match the manifest (${layer.size})`);
  return { diffId: 'sha256:' + diffHash.digest('hex'), compressedBytes, uncompressedBytes };
}

/**
 * After a layer failed to decompress or parse: re-reads the blob to tell a damaged image (the bytes do not
 * match the digest: DIGEST_MISMATCH) from a well-formed blob with bad content (the original error).
 */
export async function explainLayerFailure(
  err: unknown,
  layer: Descriptor,
  reopen: () => Promise<Readable>,
  signal?: AbortSignal,
): Promise<DfError> {
  const e = DfError.from(err);
  if (e.code !== 'CORRUPT' || signal?.aborted) return e;
  try {
    const hash = createHash('sha256');
    for await (const c of await reopen()) hash.update(c as Buffer);
    const actual = 'sha256:' + hash.digest('hex');
    if (actual !== layer.digest) return DfError.digestMismatch(`layer ${layer.digest}`, layer.digest, actual);
  } catch {
    // keep the original error
  }
  return e;
}
