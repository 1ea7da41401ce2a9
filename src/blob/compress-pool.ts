import { availableParallelism } from 'node:os';
import type { Worker } from 'node:worker_threads';
import { DfError } from '../errors.js';
import { spawnWorker } from '../util/spawn-worker.js';
import { convertAddon, type ConvertAddon } from './native-codec.js';

/** A batch of consecutive blocks for a worker: `length` bytes of `data`, cut every `blockSize` bytes. */
export interface BatchRequest {
  id: number;
  /**
   * An ArrayBuffer (transferred, and back in the reply) or a SharedArrayBuffer, sent only the first time this
   * worker sees it: later requests name it by `slot` alone (no new buffer object per message, so no external
   * memory churn for the garbage collector on either side).
   */
  data?: ArrayBuffer | SharedArrayBuffer;
  slot?: number;
  length: number;
  blockSize: number;
}

/** The worker's answer: `data` holds the stored blocks back to back; per block its stored length, codec, SHA-256. */
export interface BatchReply {
  id: number;
  data?: ArrayBuffer;
  stored?: Uint32Array;
  codecs?: Uint8Array;
  hashes?: Uint8Array;
  error?: string;
}

export interface CompressedBatch {
  /** The stored bytes of every block, back to back (a view of the buffer handed in). */
  stored: Buffer;
  /** Per block: stored length, uncompressed length, codec and SHA-256 (32 bytes each) of the stored bytes. */
  storedLengths: Uint32Array;
  lengths: Uint32Array;
  codecs: Uint8Array;
  hashes: Uint8Array;
}

interface Task {
  id: number;
  data: ArrayBuffer | SharedArrayBuffer;
  length: number;
  blockSize: number;
  resolve: (r: CompressedBatch) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  /** Tasks posted to this worker, oldest first (a worker answers in order). */
  posted: Task[];
  /** Shared buffers (by slot) this worker already holds. */
  has: Set<number>;
}

/** Batches posted to one worker before it answers: the second one keeps it busy while the first reply travels. */
const PER_WORKER = 2;

/**
 * Compresses and hashes batches of consecutive blocks, `size` at a time. With the native addon, each batch
 * is one job for the addon's own pool of `size` threads (LZ4 and the blocks' SHA-256 in C), and no worker
 * isolate is started: nothing to start up, no messages. Without it, a pool of worker threads (lz4-napi), a
 * batch per message (one message per batch instead of one per block keeps the main thread's messaging cost
 * low). `compress` returns one promise per batch; callers bound how many are in flight and await them in
 * submission order. The batch's buffer (transferred, or shared: see compress) comes back holding the stored
 * blocks: callers must not touch it in between.
 */
export class CompressPool {
  readonly size: number;
  /** The addon and its pool when batches run on native threads (then there are no worker slots). */
  private readonly native: { addon: ConvertAddon; pool: unknown } | undefined;
  /** Batches running on native threads, and their jobs (close waits for them: the C code holds the buffers). */
  private readonly running = new Map<Task, Promise<unknown>>();
  private readonly slots: Slot[] = [];
  private readonly queue: Task[] = [];
  private nextId = 1;
  private readonly slotIds = new WeakMap<SharedArrayBuffer, number>();
  private nextSlot = 1;
  private broken: Error | undefined;
  private closed = false;

  constructor(workers = 0) {
    this.size = workers > 0 ? Math.floor(workers) : availableParallelism();
    const addon = convertAddon();
    if (addon && typeof addon.compressPool === 'function')
      this.native = { addon, pool: addon.compressPool(this.size) };
    for (let i = 0; i < (this.native ? 0 : this.size); i++) {
      const worker = spawnWorker(import.meta.url, 'compress-worker');
      const slot: Slot = { worker, posted: [], has: new Set() };
      worker.on('message', (m: BatchReply) => this.onMessage(slot, m));
      worker.on('error', (err) =>
        this.fail(DfError.internal(`compression worker failed: ${err.message}`, { cause: err })),
      );
      worker.on('exit', (code) => {
        if (!this.closed)
          this.fail(DfError.internal(`compression worker exited unexpectedly (code ${code})`));
      });
      worker.unref();
      this.slots.push(slot);
    }
  }

  /**
   * Compresses `length` bytes of `data` as blocks of `blockSize` (the last one may be shorter). A
   * SharedArrayBuffer is not transferred: the caller must leave it alone until the promise settles, and the
   * workers keep a reference to it until the pool closes (reuse a few, do not make one per batch).
   */
  compress(
    data: ArrayBuffer | SharedArrayBuffer,
    length: number,
    blockSize: number,
  ): Promise<CompressedBatch> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.closed) return Promise.reject(DfError.internal('compression pool is closed'));
    return new Promise<CompressedBatch>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, data, length, blockSize, resolve, reject });
      this.dispatch();
    });
  }

  private dispatch(): void {
    if (this.native) return this.dispatchNative(this.native);
    while (this.queue.length) {
      let best: Slot | undefined;
      for (const slot of this.slots) if (!best || slot.posted.length < best.posted.length) best = slot;
      if (!best || best.posted.length >= PER_WORKER) return;
      const task = this.queue.shift()!;
      if (!best.posted.length) best.worker.ref();
      best.posted.push(task);
      if (task.data instanceof SharedArrayBuffer) {
        let id = this.slotIds.get(task.data);
        if (id === undefined) this.slotIds.set(task.data, (id = this.nextSlot++));
        const known = best.has.has(id);
        best.has.add(id);
        const req: BatchRequest = {
          id: task.id,
          slot: id,
          data: known ? undefined : task.data,
          length: task.length,
          blockSize: task.blockSize,
        };
        best.worker.postMessage(req);
      } else {
        const req: BatchRequest = {
          id: task.id,
          data: task.data,
          length: task.length,
          blockSize: task.blockSize,
        };
        best.worker.postMessage(req, [task.data]);
      }
    }
  }

  /** Starts queued batches on the native threads, `size` at a time. */
  private dispatchNative({ addon, pool }: { addon: ConvertAddon; pool: unknown }): void {
    while (this.queue.length && this.running.size < this.size) {
      const task = this.queue.shift()!;
      const n = Math.ceil(task.length / task.blockSize);
      const stored = new Uint32Array(n);
      const codecs = new Uint8Array(n);
      const hashes = new Uint8Array(32 * n);
      const buf = new Uint8Array(task.data, 0, task.length);
      const job = addon.poolCompress(pool, buf, task.length, task.blockSize, stored, codecs, hashes).then(
        (total) => {
          if (!this.running.delete(task)) return; // rejected meanwhile (pool closed or broken)
          task.resolve(batchOf(task, Buffer.from(task.data, 0, total), stored, codecs, hashes));
          this.dispatch();
        },
        (err: Error) => {
          if (!this.running.delete(task)) return;
          const e = DfError.internal(`block compression failed: ${err.message}`, { cause: err });
          task.reject(e);
          this.fail(e);
        },
      );
      this.running.set(task, job);
    }
  }

  private onMessage(slot: Slot, m: BatchReply): void {
    const task = slot.posted.shift();
    if (!slot.posted.length) slot.worker.unref();
    if (!task || task.id !== m.id) {
      this.fail(DfError.internal('compression worker answered out of turn'));
      return;
    }
    if (m.error !== undefined) task.reject(DfError.internal(`block compression failed: ${m.error}`));
    else {
      let total = 0;
      for (let i = 0; i < m.stored!.length; i++) total += m.stored![i]!;
      const data = task.data instanceof SharedArrayBuffer ? task.data : m.data!;
      task.resolve(batchOf(task, Buffer.from(data, 0, total), m.stored!, m.codecs!, m.hashes!));
    }
    this.dispatch();
  }

  private fail(err: Error): void {
    if (this.broken || this.closed) return;
    this.broken = err;
    this.rejectAll(err);
    // the pool is broken already: a failure to stop its workers adds nothing the callers could act on
    this.close().catch(() => undefined);
  }

  private rejectAll(err: Error): void {
    for (const t of this.running.keys()) t.reject(err);
    for (const slot of this.slots) for (const t of slot.posted.splice(0)) t.reject(err);
    for (const t of this.queue.splice(0)) t.reject(err);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.rejectAll(this.broken ?? DfError.aborted('compression pool closed'));
    // Idle workers are unref'd, and on Node 20 a terminate() awaited on such a worker (even after ref())
    // does not always keep the process alive: a caller awaiting close() with nothing else pending, as a
    // failed conversion's cleanup does, saw the process exit with code 0 mid-await. A timer holds it open.
    const jobs = [...this.running.values()];
    this.running.clear();
    const keepAlive = setInterval(() => undefined, 1 << 30);
    try {
      await Promise.all([...jobs, ...this.slots.map((s) => s.worker.terminate())]);
      if (this.native) this.native.addon.closePool(this.native.pool);
    } finally {
      clearInterval(keepAlive);
    }
  }
}

/** A finished batch: the stored bytes and, per block, its stored and uncompressed length, codec and hash. */
function batchOf(
  task: Task,
  stored: Buffer,
  storedLengths: Uint32Array,
  codecs: Uint8Array,
  hashes: Uint8Array,
): CompressedBatch {
  const n = storedLengths.length;
  const lengths = new Uint32Array(n);
  for (let i = 0; i < n; i++) lengths[i] = Math.min(task.blockSize, task.length - i * task.blockSize);
  return { stored, storedLengths, lengths, codecs, hashes };
}
