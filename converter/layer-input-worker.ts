import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { constants, createGunzip, type Gunzip } from 'node:zlib';
import { convertAddon } from '../src/blob/native-codec.js';

/**
 * Worker thread of LayerInflater (layer-input.ts): hashes the layer blob (digest check), gunzips it, hashes
 * the tar (diff ID) and hands the tar back in buffers of up to `outSize` bytes, transferred. gunzip is ISA-L's
 * streaming inflate in the native addon (native/dfnode_convert.c, 2-3x zlib), or zlib when the addon does
 * not load; either inflates straight into the buffer that is sent (no copy here). The main thread is left with tar parsing, the
 * files' hashes and the writer. Flow control: every input chunk gets one reply (several chunks handled in
 * one turn share a reply) carrying the tar bytes it produced, and the main thread bounds the chunks and tar
 * bytes in flight: two messages per input chunk in all.
 */

export type ToWorker =
  | { t: 'init'; gzip: boolean; outSize: number }
  /** `free`: tar buffers sent earlier that the main thread is done with, for reuse. */
  | { t: 'data'; chunk: Uint8Array; free: ArrayBuffer[] }
  | { t: 'end' };

export type FromWorker =
  | { t: 'out'; inputs: number; bufs: ArrayBuffer[]; lengths: number[] }
  | {
      t: 'done';
      blobDigest: string;
      diffId: string;
      compressedBytes: number;
      uncompressedBytes: number;
      /** Tar buffers allocated (the rest were reused). */
      tarBuffers: number;
    }
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
const native = convertAddon();
/** The native gunzip's state (when gzip and the addon loaded), and whether its last member ended. */
let ngz: unknown;
let ngzFinished = false;

function inflateNative(chunk: Buffer): void {
  let inOff = 0;
  for (;;) {
    const [inUsed, outUsed, finished] = native!.gunzip(ngz, chunk.subarray(inOff), out, outLen);
    inOff += inUsed;
    ngzFinished = finished;
    if (outUsed > 0) tarBytes(out.subarray(outLen, outLen + outUsed));
    else if (inOff >= chunk.length)
      return; // input used up and nothing more held back
    else if (inUsed === 0) throw new Error('gunzip made no progress');
  }
}

let outSize = 1 << 20;
/** The tar buffer being filled (by zlib, or by copies of a plain tar); sent when full or at the reply. */
let out: Buffer = Buffer.alloc(0);
let outLen = 0;
let compressedBytes = 0;
let uncompressedBytes = 0;
let failed = false;
/** Tar buffers handed back by the main thread, and how many were allocated. */
const freeBufs: ArrayBuffer[] = [];
let tarBuffers = 0;
/** Filled tar buffers for the next reply. */
const full: Buffer[] = [];
let replyScheduled = false;
/** Input chunks handled since the last reply. */
let inputs = 0;

function inflate(chunk: Buffer, flush: number): void {
  const z = gz!;
  let inOff = 0;
  let availIn = chunk.length;
  for (;;) {
    const availOutBefore = outSize - outLen;
    z._handle.writeSync(flush, chunk, inOff, availIn, out, outLen, availOutBefore);
    if (z.errored) throw z.errored;
    const availOutAfter = z._writeState[0]!;
    const availInAfter = z._writeState[1]!;
    const have = availOutBefore - availOutAfter;
    if (have > 0) tarBytes(out.subarray(outLen, outLen + have));
    if (availOutAfter !== 0) return;
    inOff += availIn - availInAfter;
    availIn = availInAfter;
  }
}

/** `c` was written at out[outLen...]: hashes (gzip: the diff ID) and counts it. */
function tarBytes(c: Buffer): void {
  if (gz || ngz) diffHash.update(c);
  uncompressedBytes += c.length;
  outLen += c.length;
  if (outLen === outSize) sendOut();
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
  out = newOut();
  outLen = 0;
}

function newOut(): Buffer {
  const ab = freeBufs.pop();
  if (ab) return Buffer.from(ab, 0, outSize);
  tarBuffers++;
  return Buffer.allocUnsafeSlow(outSize);
}

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
  post({ t: 'out', inputs, bufs, lengths }, bufs);
  inputs = 0;
}

/** A plain tar: copied into the outgoing buffers. */
function plain(c: Buffer): void {
  let pos = 0;
  while (pos < c.length) {
    const n = Math.min(outSize - outLen, c.length - pos);
    c.copy(out, outLen, pos, pos + n);
    pos += n;
    tarBytes(out.subarray(outLen, outLen + n));
  }
}

port.on('message', (m: ToWorker) => {
  if (failed) return;
  try {
    switch (m.t) {
      case 'init':
        outSize = m.outSize;
        out = newOut();
        if (m.gzip && native) ngz = native.gunzipper();
        else if (m.gzip) {
          gz = createGunzip() as typeof gz;
          gz!.on('error', () => undefined); // errors are thrown from inflate()
        }
        return;
      case 'data': {
        for (const ab of m.free) if (ab.byteLength === outSize) freeBufs.push(ab);
        const c = Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength);
        blobHash.update(c);
        compressedBytes += c.length;
        if (ngz) inflateNative(c);
        else if (gz) inflate(c, constants.Z_NO_FLUSH);
        else plain(c);
        inputs++;
        scheduleReply();
        return;
      }
      case 'end': {
        if (ngz) {
          inflateNative(Buffer.alloc(0));
          if (!ngzFinished) throw Object.assign(new Error('unexpected end of file'), { code: 'Z_BUF_ERROR' });
        }
        if (gz) inflate(Buffer.alloc(0), constants.Z_FINISH);
        reply();
        const blobDigest = 'sha256:' + blobHash.digest('hex');
        // A plain tar is its own diff ID: hashed once.
        const diffId = gz || ngz ? 'sha256:' + diffHash.digest('hex') : blobDigest;
        post({ t: 'done', blobDigest, diffId, compressedBytes, uncompressedBytes, tarBuffers });
        return;
      }
    }
  } catch (err) {
    fail(err);
  }
});
