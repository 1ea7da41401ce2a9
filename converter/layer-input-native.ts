import type { Readable } from 'node:stream';
import { DfError } from '../src/errors.js';
import type { ConvertAddon } from '../src/blob/native-codec.js';

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

/** A SHA-256 whose updates run on libuv's thread pool, in order. */
class PoolHash {
  private readonly handle: unknown;
  private chain: Promise<void> = Promise.resolve();

  constructor(private readonly native: ConvertAddon) {
    this.handle = native.sha256();
  }

  /** Queues `b` (which must not change until the returned promise settles). */
  update(b: Uint8Array): Promise<void> {
    this.chain = this.chain.then(() => this.native.sha256Update(this.handle, [b]));
    return this.chain;
  }

  async hex(): Promise<string> {
    await this.chain;
    return this.native.sha256Digest(this.handle).toString('hex');
  }
}

/**
 * The input side of readLayer on this thread, with the native addon: ISA-L's gunzip (gunzipAsync) and the
 * blob and diff-ID SHA-256 run as jobs on libuv's thread pool, so no worker thread is started and no buffer
 * crosses threads by message. The tar parser runs here while the next chunk inflates. Tar buffers are
 * `outSize` bytes and reused once released and hashed; a plain tar is passed on in the input's own chunks.
 */
export class NativeInflater implements Inflater {
  private readonly blobHash: PoolHash;
  private readonly diffHash: PoolHash;
  private readonly gz: unknown;
  private readonly tarQueue: Buffer[] = [];
  private queuedTar = 0;
  /** Per tar buffer yielded: the whole buffer behind it, and the diff-ID update that reads it. */
  private readonly owners = new WeakMap<Buffer, { whole: Buffer; hashed: Promise<void> }>();
  private readonly free: Buffer[] = [];
  private out: Buffer;
  private outLen = 0;
  private finished = false;
  private tarBuffers = 0;
  private compressedBytes = 0;
  private uncompressedBytes = 0;
  /** Input bytes the blob hash has not read yet (bounded: the input waits for it past tarAhead). */
  private unhashed = 0;
  private done: InflaterResult | undefined;
  private tarWaiter: Waiter | undefined;
  private roomWaiter: Waiter | undefined;
  private error: Error | undefined;
  private ended = false;
  private closed = false;

  constructor(
    private readonly native: ConvertAddon,
    private readonly input: Readable,
    gzip: boolean,
    private readonly outSize: number,
    private readonly tarAhead: number,
    private readonly onBytesIn?: (n: number) => void,
  ) {
    this.blobHash = new PoolHash(native);
    this.diffHash = new PoolHash(native);
    this.gz = gzip ? native.gunzipper() : undefined;
    this.out = this.gz ? this.newOut() : Buffer.alloc(0);
  }

  private newOut(): Buffer {
    const b = this.free.pop();
    if (b) return b;
    this.tarBuffers++;
    return Buffer.allocUnsafeSlow(this.outSize);
  }

  async pump(): Promise<void> {
    for await (const c of this.input as AsyncIterable<Buffer>) {
      if (this.error) throw this.error;
      this.onBytesIn?.(c.length);
      this.compressedBytes += c.length;
      // A stream's chunk belongs to its reader once read: nothing changes it while the hash reads it.
      this.unhashed += c.length;
      const hashed = this.blobHash.update(c).then(
        () => void (this.unhashed -= c.length),
        (err: Error) => this.fail(err),
      );
      if (this.unhashed >= this.tarAhead) await hashed;
      if (this.gz) await this.inflate(c);
      else {
        this.uncompressedBytes += c.length;
        this.push(c);
      }
      while (this.queuedTar >= this.tarAhead) await this.wait('room');
    }
    if (this.error) throw this.error;
    if (this.gz) {
      await this.inflate(Buffer.alloc(0));
      if (!this.finished) throw Object.assign(new Error('unexpected end of file'), { code: 'Z_BUF_ERROR' });
      this.emit();
    }
    const blobDigest = 'sha256:' + (await this.blobHash.hex());
    // A plain tar is its own diff ID: hashed once.
    const diffId = this.gz ? 'sha256:' + (await this.diffHash.hex()) : blobDigest;
    this.done = {
      blobDigest,
      diffId,
      compressedBytes: this.compressedBytes,
      uncompressedBytes: this.uncompressedBytes,
      tarBuffers: this.tarBuffers,
    };
    this.ended = true;
    this.wake('tar');
  }

  /** Inflates all of `c` into tar buffers (an empty `c` drains what the decoder still holds). */
  private async inflate(c: Buffer): Promise<void> {
    let inOff = 0;
    for (;;) {
      if (this.error) throw this.error;
      const [inUsed, outUsed, finished] = await this.native.gunzipAsync(
        this.gz,
        c.subarray(inOff),
        this.out,
        this.outLen,
      );
      inOff += inUsed;
      this.finished = finished;
      if (outUsed > 0) {
        this.uncompressedBytes += outUsed;
        this.outLen += outUsed;
        if (this.outLen === this.outSize) this.emit();
      } else if (inOff >= c.length) break;
      else if (inUsed === 0) throw new Error('gunzip made no progress');
    }
    // A buffer less than a quarter full is filled further: small network reads would otherwise take a
    // buffer each, and the buffers outstanding would grow with the chunk count rather than the bytes.
    if (this.outLen >= this.outSize / 4) this.emit();
  }

  /** Hands the filled part of the current tar buffer to the parser and the diff-ID hash. */
  private emit(): void {
    if (!this.outLen) return;
    const whole = this.out;
    const view = whole.subarray(0, this.outLen);
    const hashed = this.diffHash.update(view);
    hashed.catch((err: Error) => this.fail(err));
    this.owners.set(view, { whole, hashed });
    this.out = this.newOut();
    this.outLen = 0;
    this.push(view);
  }

  private push(b: Buffer): void {
    this.tarQueue.push(b);
    this.queuedTar += b.length;
    this.wake('tar');
  }

  release(bufs: Buffer[]): void {
    for (const b of bufs) {
      const o = this.owners.get(b);
      if (!o) continue;
      this.owners.delete(b);
      // reused once the diff-ID hash has read it too (a failed hash fails the layer: the buffer is dropped)
      o.hashed.then(
        () => this.free.push(o.whole),
        () => undefined,
      );
    }
  }

  async *tar(): AsyncGenerator<Buffer> {
    for (;;) {
      if (this.error) throw this.error;
      const b = this.tarQueue.shift();
      if (b) {
        this.queuedTar -= b.length;
        if (this.queuedTar < this.tarAhead) this.wake('room');
        yield b;
        continue;
      }
      if (this.ended) return;
      await this.wait('tar');
    }
  }

  result(): InflaterResult {
    if (this.error) throw this.error;
    if (!this.done) throw DfError.internal('layer input did not finish');
    return this.done;
  }

  private wake(which: 'room' | 'tar'): void {
    const w = which === 'room' ? this.roomWaiter : this.tarWaiter;
    if (which === 'room') this.roomWaiter = undefined;
    else this.tarWaiter = undefined;
    w?.resolve();
  }

  private wait(which: 'room' | 'tar'): Promise<void> {
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

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.fail(DfError.aborted('layer input closed'));
    if (!this.input.readableEnded) this.input.destroy();
  }
}
