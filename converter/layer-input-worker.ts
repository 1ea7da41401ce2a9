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

const native = convertAddon();
const port = parentPort!;
const post = (m: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);
/**
 * The blob digest and the diff ID. With the addon, both are hashed on libuv's thread pool (each a chain of
 * updates in order, the two in parallel), so this thread only inflates; a tar buffer is sent once its
 * hash has read it. Without the addon, node:crypto here.
 */
class Sha256 {
  private readonly js = native ? undefined : createHash('sha256');
  private readonly handle = native?.sha256();
  private chain: Promise<void> = Promise.resolve();

  update(b: Buffer): void {
    if (this.js) this.js.update(b);
    else this.chain = this.chain.then(() => native!.sha256Update(this.handle, [b]));
  }

  /** Resolves when every update so far has read its bytes. */
  settled(): Promise<void> {
    return this.chain;
  }

  async hex(): Promise<string> {
    if (this.js) return this.js.digest('hex');
    await this.chain;
    return native!.sha256Digest(this.handle).toString('hex');
  }
}
const blobHash = new Sha256();
const diffHash = new Sha256();
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
  if (gz || ngz) diffHash.update(c); // c stays untouched until it is sent, after the hash read it
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
  setImmediate(() => void reply());
}

async function reply(): Promise<void> {
  replyScheduled = false;
  if (failed) return;
  sendOut();
  const bufs = full.map((b) => b.buffer as ArrayBuffer);
  const lengths = full.map((b) => b.length);
  full.length = 0;
  const n = inputs;
  inputs = 0;
  try {
    await diffHash.settled(); // transferring detaches the buffers: not while the hash reads them
  } catch (err) {
    return fail(err);
  }
  if (failed) return;
  post({ t: 'out', inputs: n, bufs, lengths }, bufs);
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
        const gzip = Boolean(gz || ngz);
        void (async () => {
          await reply();
          const blobDigest = 'sha256:' + (await blobHash.hex());
          // A plain tar is its own diff ID: hashed once.
          const diffId = gzip ? 'sha256:' + (await diffHash.hex()) : blobDigest;
          if (!failed)
            post({ t: 'done', blobDigest, diffId, compressedBytes, uncompressedBytes, tarBuffers });
        })().catch(fail);
        return;
      }
    }
  } catch (err) {
    fail(err);
  }
});
