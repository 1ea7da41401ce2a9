import type { Readable } from 'node:stream';
import type { ConvertAddon } from '../src/blob/native-codec.js';
import { DfError } from '../src/errors.js';
import { TarQueue, type Inflater } from './tar-queue.js';

/** Input chunks smaller than a quarter of this are gathered into buffers of this size before they are inflated. */
const STAGE_BYTES = 1 << 20;

/** A SHA-256 whose updates run on libuv's thread pool, in order. */
class PoolHash {
  private readonly handle: unknown;
  private chain: Promise<void> = Promise.resolve();
  /** Bytes queued and not read yet (callers bound it by waiting for an update). */
  pending = 0;

  constructor(private readonly native: ConvertAddon) {
    this.handle = native.sha256();
  }

  /** Queues `b` (which must not change until the returned promise settles). */
  update(b: Uint8Array): Promise<void> {
    this.pending += b.length;
    this.chain = this.chain.then(async () => {
      await this.native.sha256Update(this.handle, [b]);
      this.pending -= b.length;
    });
    return this.chain;
  }

  async hex(): Promise<string> {
    await this.chain;
    return this.native.sha256Digest(this.handle).toString('hex');
  }
}

/**
 * The input side of readLayer on this thread, with the native addon: the decoder (decodeAsync: ISA-L's gunzip
 * or libzstd) and the blob and diff-ID SHA-256 run as jobs on libuv's thread pool, so no worker thread is started and no buffer
 * crosses threads by message. The tar parser runs here while the next chunk inflates. Tar buffers are
 * `outSize` bytes and reused once released and hashed; a plain tar is passed on in the input's own chunks
 * (small ones gathered first).
 */
export class NativeInflater extends TarQueue implements Inflater {
  private readonly blobHash: PoolHash;
  private readonly diffHash: PoolHash;
  /** The decoder's handle; none for a plain tar. */
  private readonly decoder: unknown;
  /** Per tar buffer yielded: the whole buffer behind it, and the diff-ID update that reads it. */
  private readonly owners = new WeakMap<Buffer, { whole: Buffer; hashed: Promise<void> }>();
  private readonly free: Buffer[] = [];
  private out: Buffer;
  private outLen = 0;
  private finished = false;
  private tarBuffers = 0;
  private compressedBytes = 0;
  private uncompressedBytes = 0;
  /** Small input chunks gathered (STAGE_BYTES), and staging buffers the hash and gunzip are done with. */
  private stage: Buffer | undefined;
  private stageLen = 0;
  private readonly stageFree: Buffer[] = [];

  constructor(
    private readonly native: ConvertAddon,
    private readonly input: Readable,
    compression: 'gzip' | 'zstd' | 'none',
    private readonly outSize: number,
    tarAhead: number,
    private readonly onBytesIn?: (n: number) => void,
  ) {
    super(tarAhead);
    this.blobHash = new PoolHash(native);
    this.diffHash = new PoolHash(native);
    this.decoder = compression === 'none' ? undefined : native.decoder(compression);
    this.out = this.decoder ? this.newOut() : Buffer.alloc(0);
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
      if (c.length >= STAGE_BYTES / 4) {
        await this.flushStage();
        await this.take(c);
      } else {
        // Network reads come in pieces of 16-64 KiB: each would be a gunzip job and a hash job of its own,
        // and the gunzip chain would wait on this thread between them. Gathered into 1 MiB first.
        if (this.stageLen + c.length > STAGE_BYTES) await this.flushStage();
        this.stage ??= this.stageFree.pop() ?? Buffer.allocUnsafeSlow(STAGE_BYTES);
        c.copy(this.stage, this.stageLen);
        this.stageLen += c.length;
      }
      while (this.queuedTar >= this.tarAhead) await this.wait('room');
    }
    await this.flushStage();
    if (this.error) throw this.error;
    if (this.decoder) {
      await this.inflate(Buffer.alloc(0));
      if (!this.finished) throw Object.assign(new Error('unexpected end of file'), { code: 'Z_BUF_ERROR' });
      void this.emit(); // the diff ID below waits for its hash
    }
    const blobDigest = 'sha256:' + (await this.blobHash.hex());
    // A plain tar is its own diff ID: hashed once.
    const diffId = this.decoder ? 'sha256:' + (await this.diffHash.hex()) : blobDigest;
    this.finish({
      blobDigest,
      diffId,
      compressedBytes: this.compressedBytes,
      uncompressedBytes: this.uncompressedBytes,
      tarBuffers: this.tarBuffers,
    });
  }

  /** Inflates all of `c` into tar buffers (an empty `c` drains what the decoder still holds). */
  private async inflate(c: Buffer): Promise<void> {
    let inOff = 0;
    for (;;) {
      if (this.error) throw this.error;
      const [inUsed, outUsed, finished] = await this.native.decodeAsync(
        this.decoder,
        c.subarray(inOff),
        this.out,
        this.outLen,
      );
      inOff += inUsed;
      this.finished = finished;
      if (outUsed > 0) {
        this.uncompressedBytes += outUsed;
        this.outLen += outUsed;
        if (this.outLen === this.outSize) {
          const hashed = this.emit();
          // one input chunk can inflate to a thousand times its size (a crafted layer: gigabytes of
          // zeros): the parser and the diff-ID hash catch up before more tar buffers are filled, so
          // memory stays bounded
          while (this.queuedTar >= this.tarAhead) await this.wait('room');
          if (this.diffHash.pending >= this.tarAhead) await hashed?.catch(() => undefined);
        }
      } else if (inOff >= c.length) break;
      else if (inUsed === 0) throw new Error('the decoder made no progress');
    }
    // A buffer less than a quarter full is filled further: small network reads would otherwise take a
    // buffer each, and the buffers outstanding would grow with the chunk count rather than the bytes.
    if (this.outLen >= this.outSize / 4) void this.emit(); // its hash failing fails the layer (emit)
  }

  /** Hashes and inflates (or, a plain tar, passes on) an input chunk that nothing changes meanwhile. */
  private async take(c: Buffer, staged?: Buffer): Promise<void> {
    const hashed = this.blobHash.update(c).then(
      () => {
        // a staging buffer is filled again once the hash has read it (gunzip has, when take returns); a
        // plain tar's staging buffer went to the parser and is not reused
        if (staged && this.decoder) this.stageFree.push(staged);
      },
      (err: Error) => this.fail(err),
    );
    if (this.blobHash.pending >= this.tarAhead) await hashed;
    if (this.decoder) await this.inflate(c);
    else {
      this.uncompressedBytes += c.length;
      this.push(c);
    }
  }

  /** Sends the gathered small chunks on. */
  private async flushStage(): Promise<void> {
    const staged = this.stage;
    if (!staged || !this.stageLen) return;
    const view = staged.subarray(0, this.stageLen);
    this.stage = undefined;
    this.stageLen = 0;
    await this.take(view, staged);
  }

  /** Hands the filled part of the current tar buffer to the parser and the diff-ID hash (its promise). */
  private emit(): Promise<void> | undefined {
    if (!this.outLen) return undefined;
    const whole = this.out;
    const view = whole.subarray(0, this.outLen);
    const hashed = this.diffHash.update(view);
    hashed.catch((err: Error) => this.fail(err));
    this.owners.set(view, { whole, hashed });
    this.out = this.newOut();
    this.outLen = 0;
    this.push(view);
    return hashed;
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

  async close(): Promise<void> {
    this.fail(DfError.aborted('layer input closed')); // once: fail keeps the first error
    if (!this.input.readableEnded) this.input.destroy();
  }
}
