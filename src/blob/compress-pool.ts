import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { DfError } from '../errors.js';
import type { CompressedBlock } from './block-codec.js';
import type { Codec } from './types.js';

interface Task {
  id: number;
  data: Buffer;
  resolve: (r: CompressedBlock) => void;
  reject: (e: Error) => void;
}

interface Slot {
  worker: Worker;
  busy: Task | undefined;
}

/**
 * The worker entry. Built code runs compress-worker.js. Under vitest/tsx (this file is .ts) the worker must
 * load TypeScript: `execArgv: ['--import', 'tsx']` does not apply to a worker's entry module on Node 20,
 * so a small eval'd bootstrap registers tsx's loader and then imports the .ts worker.
 */
function spawnWorker(): Worker {
  const self = import.meta.url;
  if (!self.endsWith('.ts')) return new Worker(new URL('./compress-worker.js', self));
  const api = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./compress-worker.ts', self).href;
  const code = `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry)}); });`;
  return new Worker(code, { eval: true, execArgv: [] });
}

/**
 * A pool of worker threads that LZ4-compress and hash blocks. `compress` returns one promise per block;
 * callers bound how many are in flight (the writer awaits them in submission order, which keeps output
 * ordered and memory bounded). Each block's input buffer is transferred to the worker: callers must hand
 * over a buffer that owns its whole ArrayBuffer (Buffer.allocUnsafeSlow) and not touch it afterwards.
 */
export class CompressPool {
  readonly size: number;
  private readonly slots: Slot[] = [];
  private readonly queue: Task[] = [];
  private nextId = 1;
  private broken: Error | undefined;
  private closed = false;

  constructor(workers = 0) {
    this.size = workers > 0 ? Math.floor(workers) : availableParallelism();
    for (let i = 0; i < this.size; i++) {
      const worker = spawnWorker();
      const slot: Slot = { worker, busy: undefined };
      worker.on(
        'message',
        (m: { id: number; stored?: Uint8Array; codec?: Codec; sha256?: Uint8Array; error?: string }) =>
          this.onMessage(slot, m),
      );
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

  compress(data: Buffer): Promise<CompressedBlock> {
    if (this.broken) return Promise.reject(this.broken);
    if (this.closed) return Promise.reject(DfError.internal('compression pool is closed'));
    return new Promise<CompressedBlock>((resolve, reject) => {
      this.queue.push({ id: this.nextId++, data, resolve, reject });
      this.dispatch();
    });
  }

  private dispatch(): void {
    for (const slot of this.slots) {
      if (!this.queue.length) return;
      if (slot.busy) continue;
      const task = this.queue.shift()!;
      slot.busy = task;
      slot.worker.ref();
      const d = task.data;
      slot.worker.postMessage({ id: task.id, data: d }, [d.buffer as ArrayBuffer]);
    }
  }

  private onMessage(
    slot: Slot,
    m: { id: number; stored?: Uint8Array; codec?: Codec; sha256?: Uint8Array; error?: string },
  ): void {
    const task = slot.busy;
    slot.busy = undefined;
    slot.worker.unref();
    if (!task || task.id !== m.id) {
      this.fail(DfError.internal('compression worker answered out of turn'));
      return;
    }
    if (m.error !== undefined) task.reject(DfError.internal(`block compression failed: ${m.error}`));
    else {
      const s = m.stored!;
      task.resolve({
        stored: Buffer.from(s.buffer, s.byteOffset, s.byteLength),
        codec: m.codec!,
        sha256: Buffer.from(m.sha256!.buffer, m.sha256!.byteOffset, m.sha256!.byteLength),
      });
    }
    this.dispatch();
  }

  private fail(err: Error): void {
    if (this.broken || this.closed) return;
    this.broken = err;
    for (const slot of this.slots) {
      slot.busy?.reject(err);
      slot.busy = undefined;
    }
    for (const t of this.queue.splice(0)) t.reject(err);
    void this.close();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = this.broken ?? DfError.aborted('compression pool closed');
    for (const slot of this.slots) {
      slot.busy?.reject(err);
      slot.busy = undefined;
    }
    for (const t of this.queue.splice(0)) t.reject(err);
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
  }
}
