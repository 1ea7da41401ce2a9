import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { constants, createGunzip, type Gunzip } from 'node:zlib';

/**
 * Worker thread of LayerInflater (layer-input.ts), the input side when the native addon does not load (with
 * it, NativeInflater runs ISA-L and the hashes on libuv's pool, no worker): hashes the layer blob (digest
 * check), gunzips it with zlib, hashes the tar (diff ID) and hands the tar back in shared buffers of
 * `outSize` bytes (slots, reused); zlib inflates straight into the buffer that is sent (no copy here). The main thread is left with tar parsing, the
 * files' hashes and the writer. Flow control: every input chunk gets one reply (several chunks handled in
 * one turn share a reply) carrying the tar bytes it produced, and the main thread bounds the chunks and tar
 * bytes in flight: two messages per input chunk in all.
 */

export type ToWorker =
  | { t: 'init'; gzip: boolean; outSize: number }
  /** `free`: slots of tar buffers the main thread is done with, for reuse. */
  | { t: 'data'; chunk: Uint8Array; free: number[] }
  | { t: 'end' };

export type FromWorker =
  /**
   * Tar bytes: `lengths[i]` bytes at the start of slot `slots[i]`. Tar buffers are SharedArrayBuffers, each
   * sent once (in `fresh`, with its slot) and named by slot afterwards, never transferred: no buffer object
   * and no external-memory accounting per message, for the garbage collector of either thread.
   */
  | {
      t: 'out';
      inputs: number;
      slots: number[];
      lengths: number[];
      fresh: Array<[number, SharedArrayBuffer]>;
    }
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
let outSize = 1 << 20;
/** The tar buffer being filled (by zlib, or by copies of a plain tar); sent when full or at the reply. */
let out: Buffer = Buffer.alloc(0);
let outLen = 0;
let compressedBytes = 0;
let uncompressedBytes = 0;
let failed = false;
/** Tar buffers handed back by the main thread, and how many were allocated. */
const freeSlots: number[] = [];
const slotBufs: SharedArrayBuffer[] = [];
/** Slots made since the last reply (the main thread has not seen them). */
const fresh: Array<[number, SharedArrayBuffer]> = [];
let outSlot = -1;
let tarBuffers = 0;
/** Filled tar buffers for the next reply. */
const full: Array<[number, number]> = []; // [slot, length]
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
  if (gz) diffHash.update(c);
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
  full.push([outSlot, outLen]);
  out = newOut();
  outLen = 0;
}

function newOut(): Buffer {
  let slot = freeSlots.pop();
  if (slot === undefined) {
    slot = slotBufs.length;
    slotBufs.push(new SharedArrayBuffer(outSize));
    fresh.push([slot, slotBufs[slot]!]);
    tarBuffers++;
  }
  outSlot = slot;
  return Buffer.from(slotBufs[slot]!, 0, outSize);
}

function scheduleReply(): void {
  if (replyScheduled) return;
  replyScheduled = true;
  setImmediate(() => reply());
}

/**
 * Acks the input chunks handled since the last reply, with the tar buffers filled meanwhile. A buffer less
 * than a quarter full is kept and filled further: sending it would take a new slot per small input chunk
 * (network reads), and the slots outstanding would grow with the chunk count rather than the bytes (the main
 * thread bounds the bytes).
 */
function reply(final = false): void {
  replyScheduled = false;
  if (failed) return;
  if (final || outLen >= outSize / 4) sendOut();
  const slots = full.map((f) => f[0]);
  const lengths = full.map((f) => f[1]);
  full.length = 0;
  const made = fresh.splice(0);
  const n = inputs;
  inputs = 0;
  post({ t: 'out', inputs: n, slots, lengths, fresh: made });
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
        if (m.gzip) {
          gz = createGunzip() as typeof gz;
          gz!.on('error', () => undefined); // errors are thrown from inflate()
        }
        return;
      case 'data': {
        for (const slot of m.free) if (slotBufs[slot]) freeSlots.push(slot);
        const c = Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength);
        blobHash.update(c);
        compressedBytes += c.length;
        if (gz) inflate(c, constants.Z_NO_FLUSH);
        else plain(c);
        inputs++;
        scheduleReply();
        return;
      }
      case 'end': {
        if (gz) inflate(Buffer.alloc(0), constants.Z_FINISH);
        reply(true);
        const blobDigest = 'sha256:' + blobHash.digest('hex');
        // A plain tar is its own diff ID: hashed once.
        const diffId = gz ? 'sha256:' + diffHash.digest('hex') : blobDigest;
        if (!failed) post({ t: 'done', blobDigest, diffId, compressedBytes, uncompressedBytes, tarBuffers });
        return;
      }
    }
  } catch (err) {
    fail(err);
  }
});
