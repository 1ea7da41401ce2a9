import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { constants, createGunzip, type Gunzip } from 'node:zlib';
import { readTar } from './tar-reader.js';

/**
 * Worker thread of LayerInflater (layer-input.ts): hashes the layer blob (digest check), gunzips it, hashes
 * the tar (diff ID) and hands the tar back in buffers of up to `outSize` bytes, transferred. The main thread
 * is left with tar parsing and the writer. Flow control: every input chunk gets one reply (several chunks
 * handled in one turn share a reply) carrying the tar bytes it produced, and the main thread bounds the
 * chunks and tar bytes in flight: two messages per input chunk in all.
 *
 * It also runs the same tar reader over the same bytes to hash every regular file's content (the writer's
 * dedup key), and sends the digests, keyed by the header's byte offset, with the tar buffers: a file's
 * digest goes out with the reply holding the file's last byte, so the main thread does not hash.
 */

export type ToWorker =
  | { t: 'init'; gzip: boolean; outSize: number }
  | { t: 'data'; chunk: Uint8Array }
  | { t: 'end' }
  | { t: 'want-digests' };

export type FromWorker =
  | { t: 'out'; inputs: number; bufs: ArrayBuffer[]; lengths: number[]; digests: FileDigests }
  | { t: 'digests'; digests: FileDigests; failed?: boolean }
  | { t: 'done'; blobDigest: string; diffId: string; compressedBytes: number; uncompressedBytes: number }
  | { t: 'error'; message: string; code?: string };

const port = parentPort!;
const post = (m: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);
const blobHash = createHash('sha256');
const diffHash = createHash('sha256');
/**
 * zlib's handle driven synchronously, as zlib's own processChunkSync does (this is a worker thread of its
 * own: no thread-pool round trip and no stream machinery per chunk), but without closing the handle after
 * each call, so that one gunzip state spans all input chunks.
 */
interface ZlibInternals {
  _handle: {
    writeSync(
      flush: number,
      inp: Buffer,
      inOff: number,
      inLen: number,
      out: Buffer,
      outOff: number,
      outLen: number,
    ): void;
  };
  _writeState: Uint32Array;
}
let gz: (Gunzip & ZlibInternals) | undefined;
const INFLATE_CHUNK = 256 * 1024;
let inflateOut = Buffer.alloc(0);
let inflateOff = 0;

function inflate(chunk: Buffer, flush: number): void {
  const z = gz!;
  let inOff = 0;
  let availIn = chunk.length;
  for (;;) {
    const availOutBefore = inflateOut.length - inflateOff;
    z._handle.writeSync(flush, chunk, inOff, availIn, inflateOut, inflateOff, availOutBefore);
    if (z.errored) throw z.errored;
    const availOutAfter = z._writeState[0]!;
    const availInAfter = z._writeState[1]!;
    const have = availOutBefore - availOutAfter;
    if (have > 0) {
      const out = inflateOut.subarray(inflateOff, inflateOff + have);
      inflateOff += have;
      diffHash.update(out);
      onTar(out);
    }
    if (availOutAfter === 0 || inflateOff >= inflateOut.length) {
      // Not reused: the file hasher still holds views of it.
      inflateOut = Buffer.allocUnsafe(INFLATE_CHUNK);
      inflateOff = 0;
    }
    if (availOutAfter !== 0) return;
    inOff += availIn - availInAfter;
    availIn = availInAfter;
  }
}

let outSize = 1 << 20;
let out = Buffer.alloc(0);
let outLen = 0;
let compressedBytes = 0;
let uncompressedBytes = 0;
let failed = false;

/** Tar header offsets and base64 SHA-256 digests of the files' contents, in tar order. */
export interface FileDigests {
  offsets: number[];
  digests: string[];
}

let ready: FileDigests = { offsets: [], digests: [] };
let wanted = false;
let hashFailed = false;
/** Tar buffers waiting for the file hasher to catch up (sent from setImmediate). */
const full: Buffer[] = [];
let replyScheduled = false;
/** Input chunks handled since the last reply. */
let inputs = 0;

/** Chunks for the worker's own tar reader. */
const hashQueue: Buffer[] = [];
let hashWake: (() => void) | undefined;
let hashEnded = false;
async function* hashSource(): AsyncGenerator<Buffer> {
  for (;;) {
    const c = hashQueue.shift();
    if (c) yield c;
    else if (hashEnded) return;
    else await new Promise<void>((r) => (hashWake = r));
  }
}
function feedHasher(c: Buffer | undefined): void {
  if (c) hashQueue.push(c);
  else hashEnded = true;
  const w = hashWake;
  hashWake = undefined;
  w?.();
}
const hasher = (async () => {
  try {
    for await (const { header, body } of readTar(hashSource())) {
      if (header.type !== 'file') continue;
      const h = createHash('sha256');
      for await (const c of body) h.update(c);
      ready.offsets.push(header.offset);
      ready.digests.push(h.digest('base64'));
      if (wanted) sendDigests();
    }
  } catch {
    // The main thread's reader sees the same bytes and reports the error; it hashes what it still needs.
    hashFailed = true;
    hashQueue.length = 0;
    sendDigests();
  }
})();

function takeDigests(): FileDigests {
  const d = ready;
  ready = { offsets: [], digests: [] };
  return d;
}

function sendDigests(): void {
  wanted = false;
  post({ t: 'digests', digests: takeDigests(), failed: hashFailed || undefined });
}

function fail(err: unknown): void {
  if (failed) return;
  failed = true;
  const e = err as NodeJS.ErrnoException;
  post({
    t: 'error',
    message: e?.message ?? String(err),
    code: typeof e?.code === 'string' ? e.code : undefined,
  });
}

/** Queues the current tar buffer for the next reply. */
function sendOut(): void {
  if (!outLen) return;
  full.push(out.subarray(0, outLen));
  out = Buffer.allocUnsafeSlow(outSize);
  outLen = 0;
}

/** Replies from setImmediate: by then the file hasher (microtasks) has seen every byte fed so far. */
function scheduleReply(): void {
  if (replyScheduled) return;
  replyScheduled = true;
  setImmediate(reply);
}

function reply(): void {
  replyScheduled = false;
  if (failed) return;
  sendOut();
  const bufs = full.map((b) => b.buffer as ArrayBuffer);
  const lengths = full.map((b) => b.length);
  full.length = 0;
  post({ t: 'out', inputs, bufs, lengths, digests: takeDigests() }, bufs);
  inputs = 0;
}

function onTar(c: Buffer): void {
  uncompressedBytes += c.length;
  if (!hashFailed) feedHasher(c);
  let pos = 0;
  while (pos < c.length) {
    const n = Math.min(outSize - outLen, c.length - pos);
    c.copy(out, outLen, pos, pos + n);
    outLen += n;
    pos += n;
    if (outLen === outSize) sendOut();
  }
}

async function finish(): Promise<void> {
  if (failed) return;
  feedHasher(undefined);
  await hasher;
  reply();
  if (hashFailed) sendDigests();
  const blobDigest = 'sha256:' + blobHash.digest('hex');
  // A plain tar is its own diff ID: hashed once.
  const diffId = gz ? 'sha256:' + diffHash.digest('hex') : blobDigest;
  post({ t: 'done', blobDigest, diffId, compressedBytes, uncompressedBytes });
}

port.on('message', (m: ToWorker) => {
  if (failed) return;
  try {
    switch (m.t) {
      case 'init':
        outSize = m.outSize;
        out = Buffer.allocUnsafeSlow(outSize);
        if (m.gzip) {
          gz = createGunzip({ chunkSize: INFLATE_CHUNK }) as typeof gz;
          gz!.on('error', () => undefined); // errors are thrown from inflate()
          inflateOut = Buffer.allocUnsafe(INFLATE_CHUNK);
        }
        return;
      case 'data': {
        const c = Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength);
        blobHash.update(c);
        compressedBytes += c.length;
        if (gz) inflate(c, constants.Z_NO_FLUSH);
        else onTar(c);
        inputs++;
        scheduleReply();
        return;
      }
      case 'end':
        if (gz) inflate(Buffer.alloc(0), constants.Z_FINISH);
        void finish();
        return;
      case 'want-digests':
        if (ready.offsets.length || hashFailed) sendDigests();
        else wanted = true;
        return;
    }
  } catch (err) {
    fail(err);
  }
});
