import { DfError } from '../src/errors.js';

/** What readLayer gets from an inflater at the end: digests and byte counts. */
export interface InflaterResult {
  blobDigest: string;
  diffId: string;
  compressedBytes: number;
  uncompressedBytes: number;
  /** Tar buffers allocated (the rest were reused). */
  tarBuffers: number;
}

/** Reads a layer blob, hashes it and offers its tar (readLayer's input side). */
export interface Inflater {
  /** Reads the input; resolves when all of it was read (and inflated). */
  pump(): Promise<void>;
  /** The tar, as buffers; each is valid until release()d. */
  tar(): AsyncGenerator<Buffer>;
  /** Tar buffers yielded by tar() that nothing references any more: reused. */
  release(bufs: Buffer[]): void;
  /** The digests and byte counts, after tar() ended. */
  result(): InflaterResult;
  fail(err: Error): void;
  close(): Promise<void>;
}

interface Waiter {
  resolve: () => void;
  reject: (e: Error) => void;
}

/**
 * The tar side shared by the inflaters: a queue of tar buffers for the parser, bounded to `tarAhead` bytes
 * (the input side waits for 'room'), the first error, and the result once the input ended.
 */
export abstract class TarQueue {
  private readonly tarQueue: Buffer[] = [];
  protected queuedTar = 0;
  protected error: Error | undefined;
  private done: InflaterResult | undefined;
  private tarWaiter: Waiter | undefined;
  private roomWaiter: Waiter | undefined;

  constructor(protected readonly tarAhead: number) {}

  /** Queues tar bytes for the parser. */
  protected push(b: Buffer): void {
    this.tarQueue.push(b);
    this.queuedTar += b.length;
    this.wake('tar');
  }

  /** The input ended: tar() ends after the queued buffers, result() answers `done`. */
  protected finish(done: InflaterResult): void {
    this.done = done;
    this.wake('tar');
  }

  async *tar(): AsyncGenerator<Buffer> {
    for (;;) {
      if (this.error) throw this.error;
      const b = this.tarQueue.shift();
      if (b) {
        this.queuedTar -= b.length;
        this.taken(b.length);
        if (this.queuedTar < this.tarAhead) this.wake('room');
        yield b;
        continue;
      }
      if (this.done) return;
      await this.wait('tar');
    }
  }

  /** The parser took `bytes` off the queue (for an input side that bounds what it produced). */
  protected taken(_bytes: number): void {}

  result(): InflaterResult {
    if (this.error) throw this.error;
    if (!this.done) throw DfError.internal('layer input did not finish');
    return this.done;
  }

  protected wake(which: 'room' | 'tar'): void {
    const w = which === 'room' ? this.roomWaiter : this.tarWaiter;
    if (which === 'room') this.roomWaiter = undefined;
    else this.tarWaiter = undefined;
    w?.resolve();
  }

  protected wait(which: 'room' | 'tar'): Promise<void> {
    if (this.error) return Promise.reject(this.error);
    return new Promise<void>((resolve, reject) => {
      if (which === 'room') this.roomWaiter = { resolve, reject };
      else this.tarWaiter = { resolve, reject };
    });
  }

  fail(err: Error): void {
    if (this.error) return;
    this.error = err;
    for (const w of [this.roomWaiter, this.tarWaiter]) w?.reject(err);
    this.roomWaiter = this.tarWaiter = undefined;
  }
}
