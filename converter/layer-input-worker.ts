import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { constants, createGunzip, type Gunzip } from 'node:zlib';

/**
 * Worker thread of LayerInflater (layer-input.ts), the input side when the native addon does not load (with
 * it, NativeInflater runs ISA-L and the hashes on libuv's pool, no worker): hashes the layer blob (digest
 * check), gunzips it with zlib, hashes the tar (diff ID) and hands the tar back in shared buffers of
 * `outSize` bytes (slots, reused); zlib inflates straight into the buffer that is sent (no copy here). The
 * main thread is left with tar parsing, the files' hashes and the writer. Flow control: every input chunk
 * gets one reply (several chunks handled in one turn share a reply) carrying the tar bytes it produced, and
 * the main thread bounds the chunks in flight. The worker bounds the tar bytes: once `tarAhead` bytes it
 * sent are not taken by the parser, it stops mid-chunk and goes on when the main thread says it took some
 * ('took'), so an input chunk that inflates a thousandfold (a gzip bomb) costs a few buffers, not its size.
 */

export type ToWorker =
  /** `tarAhead`: tar bytes sent and not taken by the parser yet, beyond which the inflate waits. */
  | { t: 'init'; gzip: boolean; outSize: number; tarAhead: number }
  | { t: 'data'; chunk: Uint8Array }
  /** Tar bytes the parser took off its queue: the inflate may go on. */
  | { t: 'took'; bytes: number }
  /** Slots of tar buffers the main thread is done with, for reuse. */
  | { t: 'free'; slots: number[] }
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
let tarAhead = 8 << 20;
/** The tar buffer being filled (by zlib, or by copies of a plain tar), or none (outSlot -1). */
let out: Buffer = Buffer.alloc(0);
let outLen = 0;
let outSlot = -1;
let compressedBytes = 0;
let uncompressedBytes = 0;
let failed = false;
/** Tar bytes sent (or queued to send) that the parser has not taken yet. */
let untaken = 0;
/** Tar buffers handed back by the main thread, and how many were allocated. */
const freeSlots: number[] = [];
const slotBufs: SharedArrayBuffer[] = [];
/** Slots made since the last reply (the main thread has not seen them). */
const fresh: Array<[number, SharedArrayBuffer]> = [];
let tarBuffers = 0;
/** Filled tar buffers for the next reply. */
const full: Array<[number, number]> = []; // [slot, length]
let replyScheduled = false;
/** Input chunks handled since the last reply. */
let inputs = 0;

/** Input not inflated yet: the chunk being worked on first, `off` bytes of it done. */
interface Pending {
  chunk: Buffer;
  off: number;
  flush: number;
  /** An input chunk the main thread counts (the final flush is not one). */
  counted: boolean;
}
const pending: Pending[] = [];
let ended = false;

/** Makes sure a tar buffer is there to fill; false while the parser is `tarAhead` behind. */
function haveOut(): boolean {
  if (outSlot >= 0) return true;
  if (untaken >= tarAhead) return false;
  let slot = freeSlots.pop();
  if (slot === undefined) {
    slot = slotBufs.length;
    slotBufs.push(new SharedArrayBuffer(outSize));
    fresh.push([slot, slotBufs[slot]!]);
    tarBuffers++;
  }
  outSlot = slot;
  out = Buffer.from(slotBufs[slot]!, 0, outSize);
  return true;
}

/** Inflates `p` into the tar buffers; false if it had to stop (the parser is behind), `p.off` saying where. */
function inflate(p: Pending): boolean {
  const z = gz!;
  for (;;) {
    if (!haveOut()) return false;
    const availIn = p.chunk.length - p.off;
    const availOutBefore = outSize - outLen;
    z._handle.writeSync(p.flush, p.chunk, p.off, availIn, out, outLen, availOutBefore);
    if (z.errored) throw z.errored;
    const availOutAfter = z._writeState[0]!;
    const availInAfter = z._writeState[1]!;
    p.off += availIn - availInAfter;
    const have = availOutBefore - availOutAfter;
    if (have > 0) tarBytes(out.subarray(outLen, outLen + have));
    if (availOutAfter !== 0) return true;
  }
}

/** A plain tar: copied into the outgoing buffers. */
function plain(p: Pending): boolean {
  const c = p.chunk;
  while (p.off < c.length) {
    if (!haveOut()) return false;
    const n = Math.min(outSize - outLen, c.length - p.off);
    c.copy(out, outLen, p.off, p.off + n);
    p.off += n;
    tarBytes(out.subarray(outLen, outLen + n));
  }
  return true;
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
  untaken += outLen;
  outSlot = -1;
  outLen = 0;
}

function scheduleReply(): void {
  if (replyScheduled) return;
  replyScheduled = true;
  setImmediate(() => reply());
}

/**
 * Acks the input chunks handled since the last reply, with the tar buffers filled meanwhile. A buffer less
 * than a quarter full is kept and filled further: sending it would take a new slot per small input chunk
 * (network reads), and the slots outstanding would grow with the chunk count rather than the bytes. While
 * the inflate waits for the parser, the current buffer is always full and sent.
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
  if (n || slots.length || made.length) post({ t: 'out', inputs: n, slots, lengths, fresh: made });
}

/** Works through the pending input until it is done or the parser is `tarAhead` behind. */
function drain(): void {
  while (pending.length) {
    const p = pending[0]!;
    const done = gz ? inflate(p) : plain(p);
    scheduleReply(); // what is full goes to the parser either way
    if (!done) return;
    pending.shift();
    if (p.counted) inputs++;
  }
  if (!ended) return;
  ended = false;
  reply(true);
  const blobDigest = 'sha256:' + blobHash.digest('hex');
  // A plain tar is its own diff ID: hashed once.
  const diffId = gz ? 'sha256:' + diffHash.digest('hex') : blobDigest;
  if (!failed) post({ t: 'done', blobDigest, diffId, compressedBytes, uncompressedBytes, tarBuffers });
}

port.on('message', (m: ToWorker) => {
  if (failed) return;
  try {
    switch (m.t) {
      case 'init':
        outSize = m.outSize;
        tarAhead = m.tarAhead;
        if (m.gzip) {
          gz = createGunzip() as typeof gz;
          gz!.on('error', () => undefined); // errors are thrown from inflate()
        }
        return;
      case 'data': {
        const chunk = Buffer.from(m.chunk.buffer, m.chunk.byteOffset, m.chunk.byteLength);
        blobHash.update(chunk);
        compressedBytes += chunk.length;
        pending.push({ chunk, off: 0, flush: constants.Z_NO_FLUSH, counted: true });
        drain(); // returns at once while the parser is behind
        return;
      }
      case 'took': {
        const wasBehind = untaken >= tarAhead;
        untaken -= m.bytes;
        if (wasBehind && untaken < tarAhead) drain();
        return;
      }
      case 'free':
        for (const slot of m.slots) if (slotBufs[slot]) freeSlots.push(slot);
        return;
      case 'end': {
        ended = true;
        if (gz) pending.push({ chunk: Buffer.alloc(0), off: 0, flush: constants.Z_FINISH, counted: false });
        drain();
        return;
      }
    }
  } catch (err) {
    fail(err);
  }
});
