import { createHash } from 'node:crypto';
import { ReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import type { Worker } from 'node:worker_threads';
import { spawnWorker } from '../src/util/spawn-worker.js';
import { DfError } from '../src/errors.js';
import { layerCompression, type Descriptor } from '../src/registry/oci.js';
import { convertAddon } from '../src/blob/native-codec.js';
import type { FromWorker, ToWorker } from './layer-input-worker.js';
import { NativeInflater } from './layer-input-native.js';
import { TarQueue, type Inflater, type InflaterResult } from './tar-queue.js';
import { readTar, type TarEntry } from './tar-reader.js';

export interface LayerInputResult {
  /** sha256 of the uncompressed tar (the layer's diff ID). */
  diffId: string;
  /** Bytes of the layer blob read. */
  compressedBytes: number;
  uncompressedBytes: number;
  /** Tar buffers the input worker allocated (the others were reused). */
  tarBuffers: number;
}

export type LayerEntry = TarEntry;

/** Tar bytes come back from the worker in buffers of this size. */
const TAR_BUFFER = 4 << 20;
/** Input chunks posted to the worker and not answered yet. */
const INPUT_AHEAD = 2;
/** Reading pauses while this many tar bytes wait for the parser. */
const TAR_AHEAD = 8 << 20;
/** A larger entry's body chunks are reused once the next one is asked for (readLayer). */
const EAGER_RELEASE_BYTES = 16 << 20;

/** `body`, calling `release` each time the consumer asks for the chunk after one it was given. */
function releasing(body: AsyncIterable<Buffer>, release: () => void): AsyncIterable<Buffer> {
  return {
    async *[Symbol.asyncIterator]() {
      for await (const c of body) {
        yield c;
        release(); // the consumer is done with c (and every chunk before it)
      }
    },
  };
}

/**
 * Runs blob hashing, gunzip and diff-ID hashing of one layer on a worker thread (layer-input-worker.ts):
 * reads `input` and feeds it to the worker, and offers the tar as an async iterable of buffers. Used when
 * the native addon does not load (zlib on the worker); with the addon, NativeInflater needs no worker.
 */
class LayerInflater extends TarQueue implements Inflater {
  private readonly worker: Worker;
  /** Tar buffers from the worker, and those of them released (see release) to go back with the next input. */
  private readonly slotOf = new WeakMap<Buffer, number>();
  private readonly slotBufs = new Map<number, SharedArrayBuffer>();
  private inflight = 0;
  private closed = false;

  constructor(
    private readonly input: Readable,
    gzip: boolean,
    private readonly onBytesIn?: (n: number) => void,
  ) {
    super(TAR_AHEAD);
    this.worker = spawnWorker(import.meta.url, 'layer-input-worker');
    this.worker.on('message', (m: FromWorker) => this.onMessage(m));
    this.worker.on('error', (err) =>
      this.fail(DfError.internal(`layer input worker failed: ${err.message}`, { cause: err })),
    );
    this.worker.on('exit', (code) => {
      if (!this.closed) this.fail(DfError.internal(`layer input worker exited unexpectedly (code ${code})`));
    });
    this.send({ t: 'init', gzip, outSize: TAR_BUFFER, tarAhead: TAR_AHEAD });
  }

  private send(m: ToWorker, transfer?: ArrayBuffer[]): void {
    this.worker.postMessage(m, transfer);
  }

  private onMessage(m: FromWorker): void {
    switch (m.t) {
      case 'out':
        this.inflight -= m.inputs;
        for (const [slot, sab] of m.fresh) this.slotBufs.set(slot, sab);
        for (let i = 0; i < m.slots.length; i++) {
          const sab = this.slotBufs.get(m.slots[i]!);
          if (!sab)
            return this.fail(DfError.internal(`layer input worker sent unknown buffer ${m.slots[i]}`));
          const b = Buffer.from(sab, 0, m.lengths[i]!);
          this.slotOf.set(b, m.slots[i]!);
          this.push(b);
        }
        this.wake('room'); // input chunks were answered
        return;
      case 'done':
        this.finish(m);
        return;
      case 'error': {
        const e = new Error(m.message) as NodeJS.ErrnoException;
        if (m.code) e.code = m.code;
        this.fail(e);
        return;
      }
    }
  }

  /** Reads the input into the worker; resolves when all of it was handed over. */
  async pump(): Promise<void> {
    for await (const c of this.input as AsyncIterable<Buffer>) {
      if (this.error) throw this.error;
      this.onBytesIn?.(c.length);
      // Transferred to the worker. A chunk of a file read stream, a whole ArrayBuffer of its own that nothing
      // else references (it allocates one per read), goes as it is; any other chunk is copied first: the
      // source may share its memory, reuse it, or be a buffer the caller still holds.
      const own =
        this.input instanceof ReadStream &&
        c.byteOffset === 0 &&
        c.buffer.byteLength === c.length &&
        !(c.buffer instanceof SharedArrayBuffer);
      const chunk = own ? new Uint8Array(c.buffer, 0, c.length) : new Uint8Array(c);
      this.inflight++;
      this.send({ t: 'data', chunk }, [chunk.buffer as ArrayBuffer]);
      while (this.inflight >= INPUT_AHEAD || this.queuedTar >= TAR_AHEAD) await this.wait('room');
    }
    this.send({ t: 'end' });
  }

  /** The worker waits once the parser is `TAR_AHEAD` bytes behind it: tells it what was taken. */
  protected override taken(bytes: number): void {
    if (!this.closed) this.send({ t: 'took', bytes });
  }

  /**
   * Tar buffers that tar() yielded and nothing references any more: their slots go back to the worker, and
   * it fills them again (no allocation per buffer). The worker overwrites them, so nothing may use a view of
   * a released buffer.
   */
  release(bufs: Buffer[]): void {
    const slots: number[] = [];
    for (const b of bufs) {
      const slot = this.slotOf.get(b);
      if (slot === undefined) continue;
      this.slotOf.delete(b);
      slots.push(slot);
    }
    if (slots.length && !this.closed) this.send({ t: 'free', slots });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.fail(DfError.aborted('layer input closed'));
    if (!this.input.readableEnded) this.input.destroy();
    await this.worker.terminate();
  }
}

/** Node 20's zlib has no zstd: without the addon a zstd layer is refused before anything is read. */
function zstdNeedsAddon(what: string): never {
  throw DfError.unsupported(
    `${what} is zstd-compressed: reading zstd needs dfnode's native converter addon (libzstd), which is not ` +
      'loaded here (build it with `npm run build:native`; DFNODE_CONVERT_ADDON=none turns it off)',
  );
}

/**
 * Streams a layer blob into `onEntry` entry by entry: checks the media type first, decompresses (gzip, zstd),
 * hashes the blob (digest check) and the tar (diff ID) on the way, and fails clearly on corrupt input.
 * Blob hashing, decompression and diff-ID hashing run on libuv's thread pool (native addon) or a worker thread;
 * tar parsing on this one. A body chunk is valid until the promise of the `onEntry` call that got it settles,
 * and for an entry larger than 16 MiB (EAGER_RELEASE_BYTES) only until the body's next chunk is asked for: its
 * memory is then reused (copy what must live longer). That bounds memory whatever the size of a file (a
 * crafted layer can hold gigabytes of zeros in a few MB of gzip). The digest is checked at the end, so
 * callers must discard what they built when this throws.
 */
export async function readLayer(
  input: Readable,
  layer: Descriptor,
  onEntry: (entry: LayerEntry) => Promise<void>,
  opts: { signal?: AbortSignal; onBytesIn?: (n: number) => void } = {},
): Promise<LayerInputResult> {
  const compression = layerCompression(layer.mediaType);
  const what = `layer ${layer.digest}`;
  const { signal } = opts;
  signal?.throwIfAborted();
  const native = convertAddon();
  const inflater: Inflater =
    native && typeof native.decodeAsync === 'function'
      ? new NativeInflater(native, input, compression, TAR_BUFFER, TAR_AHEAD, opts.onBytesIn)
      : compression === 'zstd'
        ? zstdNeedsAddon(what)
        : new LayerInflater(input, compression === 'gzip', opts.onBytesIn);
  const onAbort = () => void inflater.close();
  signal?.addEventListener('abort', onAbort, { once: true });
  let res: InflaterResult;
  try {
    const pumping = inflater.pump();
    pumping.catch((err: Error) => inflater.fail(err)); // a read error ends the tar side too
    // Tar buffers the reader has used up go back to the worker once the entry being handled is done with:
    // onEntry may hold views of them (body chunks) until its promise settles, and no longer.
    const consumed: Buffer[] = [];
    const release = () => {
      if (consumed.length) inflater.release(consumed.splice(0));
    };
    for await (const entry of readTar(inflater.tar(), (b) => consumed.push(b))) {
      signal?.throwIfAborted();
      await onEntry(
        entry.header.size > EAGER_RELEASE_BYTES ? { ...entry, body: releasing(entry.body, release) } : entry,
      );
      release();
    }
    await pumping;
    res = inflater.result();
  } catch (err) {
    if (signal?.aborted) throw DfError.aborted(`${what}: aborted`);
    const e = err as NodeJS.ErrnoException;
    if (e?.code === 'ZSTD_WINDOW_TOO_LARGE')
      throw DfError.unsupported(`${what}: ${e.message} (the decoder's memory is bounded)`, { cause: err });
    if (
      e?.code?.startsWith?.('Z_') ||
      e?.code?.startsWith?.('ZSTD_') ||
      /incorrect header check|invalid (block|distance|code|stored)|unexpected end of file/i.test(
        e?.message ?? '',
      )
    )
      throw DfError.corrupt(
        `${what}: corrupt ${compression} data (${e.message}); the source image is damaged`,
        { cause: err },
      );
    if (err instanceof DfError && err.code === 'CORRUPT')
      throw DfError.corrupt(`${what}: ${err.message}`, { cause: err });
    throw DfError.from(err, what);
  } finally {
    signal?.removeEventListener('abort', onAbort);
    await inflater.close();
  }
  if (res.blobDigest !== layer.digest) throw DfError.digestMismatch(what, layer.digest, res.blobDigest);
  if (res.compressedBytes !== layer.size)
    throw DfError.corrupt(`${what}: size ${res.compressedBytes} does not match the manifest (${layer.size})`);
  return {
    diffId: res.diffId,
    compressedBytes: res.compressedBytes,
    uncompressedBytes: res.uncompressedBytes,
    tarBuffers: res.tarBuffers,
  };
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
