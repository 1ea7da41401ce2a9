import { createHash } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { DfError } from '../errors.js';
import { compressBatch, decodeStoredBlock } from './block-codec.js';
import { CompressPool, type CompressedBatch } from './compress-pool.js';
import { convertAddon } from './native-codec.js';
import { B } from './toc-layout.js';
import type { Codec } from './types.js';

/** Output writes are batched up to this many bytes. */
const WRITE_BATCH = 1024 * 1024;
/**
 * Blocks go to the workers in batches of about this many uncompressed bytes (at least one block): fewer,
 * larger messages (each hand-off wakes another thread, costly on a machine with fewer cores than threads).
 */
const BATCH_BYTES = 4 * 1024 * 1024;

export interface BlockSinkOptions {
  /** File the blob is written to. */
  path: string;
  blockSize: number;
  /** Compression worker threads; 0 = os.availableParallelism(). */
  workers: number;
  /** Throws when the write must stop (signal aborted, writer aborted). */
  checkAbort: () => void;
}

/**
 * The data half of the writer: cuts the uncompressed data stream into blocks, has them compressed and
 * hashed on worker threads (a batch of consecutive blocks per message), and writes the stored blocks to the
 * output file in order, building the block table and the whole-blob SHA-256 on the way. At most a few
 * batches per worker are in flight, so memory does not depend on the layer size.
 */
export class BlockSink {
  private readonly blockSize: number;
  private readonly batchSize: number;
  private readonly workers: number;
  private readonly checkAbort: () => void;
  private readonly path: string;

  private pool: CompressPool | undefined;
  private readonly inflight: Array<Promise<CompressedBatch>> = [];
  private maxInflight = 4;
  private curAb: SharedArrayBuffer;
  private cur: Buffer;
  private curLen = 0;

  private fh: FileHandle | undefined;
  private closed = false;
  private writePos = 0;
  private batch: Buffer[] = [];
  private batchBytes = 0;
  /** The blob's SHA-256: on the thread pool while the same bytes are written (native), else on this thread. */
  private readonly native = convertAddon();
  private readonly blobHash = this.native ? undefined : createHash('sha256');
  private readonly nativeHash = this.native?.sha256();
  private records: Buffer[] = [];
  /** The blocks' datasync started by endBlocks (awaited by close before its own sync). */
  private earlySync: Promise<void> | undefined;
  /** Per block written so far: offset of its stored bytes in the blob, stored length, codec (for readData). */
  private readonly blockOffsets: number[] = [];
  private readonly blockStored: number[] = [];
  private readonly blockCodecs: Codec[] = [];
  private readonly blockLengths: number[] = [];
  /** Uncompressed bytes covered by the blocks written so far. */
  private writtenData = 0;
  /** Batch buffers (ArrayBuffers this sink made) whose stored bytes are written: reused for new batches. */
  private readonly ours = new WeakSet<SharedArrayBuffer>();
  private readonly free: SharedArrayBuffer[] = [];

  /** Uncompressed bytes appended so far. */
  dataLength = 0;
  /** Stored bytes of the blocks written so far. */
  storedDataLength = 0;
  blockCount = 0;

  constructor(opts: BlockSinkOptions) {
    this.path = opts.path;
    this.blockSize = opts.blockSize;
    this.batchSize = Math.max(1, Math.floor(BATCH_BYTES / opts.blockSize)) * opts.blockSize;
    this.workers = opts.workers;
    this.checkAbort = opts.checkAbort;
    this.curAb = new SharedArrayBuffer(0);
    this.cur = Buffer.alloc(0);
    this.newBatch();
  }

  private newBatch(): void {
    // Shared, not transferred: the same few buffers go round (free list, uncapped: as many as were ever in
    // use at once) and each worker receives each buffer once, so no 4 MiB buffer object is made per message.
    const ab = this.free.pop() ?? new SharedArrayBuffer(this.batchSize);
    this.curAb = ab;
    this.cur = Buffer.from(ab, 0, this.batchSize);
  }

  /** Appends bytes to the data stream. */
  async append(data: Buffer): Promise<void> {
    let pos = 0;
    while (pos < data.length) {
      const n = Math.min(this.batchSize - this.curLen, data.length - pos);
      if (this.native) this.native.copyInto(this.cur, this.curLen, data.subarray(pos, pos + n));
      else data.copy(this.cur, this.curLen, pos, pos + n);
      this.curLen += n;
      pos += n;
      this.dataLength += n;
      if (this.curLen === this.batchSize) await this.submit();
    }
  }

  /** Cuts the last (short) block and waits until every block is written. */
  async endBlocks(): Promise<void> {
    if (this.curLen > 0) {
      if (!this.pool && this.curLen <= this.blockSize) {
        // Single-block blob: not worth starting worker threads.
        const r = compressBatch(this.cur, this.curLen, this.blockSize);
        await this.writeBatch({
          stored: this.cur.subarray(0, r.total),
          storedLengths: r.stored,
          lengths: Uint32Array.of(this.curLen),
          codecs: r.codecs,
          hashes: r.hashes,
        });
        this.curLen = 0;
      } else await this.submit();
    }
    while (this.inflight.length) await this.writeNext();
    await this.pool?.close();
    this.pool = undefined;
    // The blocks are most of the blob: their writeback starts now, on the thread pool, while the caller
    // encodes the TOC; close()'s sync then has little left to wait for.
    await this.flush();
    const early = this.fh?.datasync();
    early?.catch(() => undefined); // close() syncs again and reports
    this.earlySync = early;
  }

  /** The block table (B.SIZE bytes per block, in order). */
  blockTable(): Buffer {
    const t = Buffer.concat(this.records);
    this.records = [];
    return t;
  }

  private async submit(): Promise<void> {
    if (!this.pool) {
      this.pool = new CompressPool(this.workers);
      this.maxInflight = 2 * this.pool.size + 1; // memory: ~maxInflight x BATCH_BYTES
    }
    const p = this.pool.compress(this.curAb, this.curLen, this.blockSize);
    p.catch(() => undefined); // awaited in order by writeNext; no unhandled rejection meanwhile
    this.inflight.push(p);
    this.newBatch();
    this.curLen = 0;
    while (this.inflight.length >= this.maxInflight) await this.writeNext();
  }

  private async writeNext(): Promise<void> {
    const r = await this.inflight.shift()!;
    // The batch's buffer holds the stored blocks now: reusable once written.
    this.ours.add(r.stored.buffer as SharedArrayBuffer);
    await this.writeBatch(r);
  }

  private async writeBatch(r: CompressedBatch): Promise<void> {
    const n = r.storedLengths.length;
    const recs = Buffer.alloc(n * B.SIZE);
    let at = this.storedDataLength;
    for (let i = 0; i < n; i++) {
      this.blockOffsets.push(at);
      this.blockStored.push(r.storedLengths[i]!);
      this.blockCodecs.push(r.codecs[i]! as Codec);
      this.blockLengths.push(r.lengths[i]!);
      at += r.storedLengths[i]!;
      this.writtenData += r.lengths[i]!;
      const o = i * B.SIZE;
      recs.writeUInt32LE(r.storedLengths[i]!, o + B.storedLength);
      recs.writeUInt32LE(r.lengths[i]!, o + B.length);
      recs[o + B.codec] = r.codecs[i]!;
      recs.set(r.hashes.subarray(32 * i, 32 * i + 32), o + B.sha256);
    }
    this.records.push(recs);
    this.blockCount += n;
    this.storedDataLength += r.stored.length;
    await this.emit(r.stored);
  }

  /** Appends raw bytes (TOC, footer) to the blob after the blocks. */
  async emit(buf: Buffer): Promise<void> {
    this.batch.push(buf);
    this.batchBytes += buf.length;
    if (this.batchBytes >= WRITE_BATCH) await this.flush();
  }

  private async flush(): Promise<void> {
    if (!this.batchBytes) return;
    this.checkAbort();
    if (!this.fh) {
      const fh = await open(this.path, 'w+');
      if (this.closed) {
        await fh.close();
        await unlink(this.path).catch(() => undefined);
        throw DfError.aborted('DFB writer: aborted');
      }
      this.fh = fh;
    }
    const bufs = this.batch;
    const total = this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
    // Hashed on the thread pool while written (both read the same buffers; neither changes them).
    const hashing = this.nativeHash ? this.native!.sha256Update(this.nativeHash, bufs) : undefined;
    if (!hashing) for (const b of bufs) this.blobHash!.update(b);
    try {
      let written = 0;
      while (written < total) {
        const { bytesWritten } = await this.fh.writev(skip(bufs, written), this.writePos + written);
        written += bytesWritten;
      }
    } finally {
      await hashing; // the buffers are reused below: not before the hash has read them
    }
    this.writePos += total;
    for (const b of bufs) {
      const ab = b.buffer as SharedArrayBuffer;
      if (this.ours.has(ab)) {
        this.ours.delete(ab);
        this.free.push(ab);
      }
    }
  }

  /** Flushes, syncs and closes the file. Returns the blob size and sha256:hex digest. */
  async close(): Promise<{ size: number; digest: string }> {
    await this.flush();
    this.fh ??= await open(this.path, 'w+');
    await this.earlySync?.catch(() => undefined);
    await this.fh.sync();
    await this.fh.close();
    this.fh = undefined;
    this.closed = true;
    const digest = this.nativeHash ? this.native!.sha256Digest(this.nativeHash) : this.blobHash!.digest();
    return { size: this.writePos, digest: 'sha256:' + digest.toString('hex') };
  }

  /**
   * The uncompressed data stream's bytes [offset, offset + length), which must have been appended: from the
   * batch being filled, or read back from the output file (waiting for the batches in flight that hold them
   * and decompressing their blocks). For the writer's byte-for-byte dedup check.
   */
  async readData(offset: number, length: number): Promise<Buffer> {
    const end = offset + length;
    if (offset < 0 || length < 0 || end > this.dataLength)
      throw DfError.internal(`DFB writer: readData(${offset}, ${length}) beyond the data stream`);
    const out = Buffer.allocUnsafe(length);
    const curStart = this.dataLength - this.curLen;
    if (end > curStart) {
      const from = Math.max(offset, curStart);
      this.cur.copy(out, from - offset, from - curStart, end - curStart);
    }
    const fileEnd = Math.min(end, curStart);
    if (offset >= fileEnd) return out;
    while (this.writtenData < fileEnd && this.inflight.length) await this.writeNext();
    await this.flush();
    const bs = this.blockSize;
    for (let i = Math.floor(offset / bs); i * bs < fileEnd; i++) {
      this.checkAbort();
      const stored = Buffer.allocUnsafe(this.blockStored[i]!);
      const { bytesRead } = await this.fh!.read(stored, 0, stored.length, this.blockOffsets[i]!);
      if (bytesRead !== stored.length)
        throw DfError.internal(`DFB writer: ${this.path} is shorter than written`);
      const data = decodeStoredBlock(
        stored,
        this.blockCodecs[i]!,
        this.blockLengths[i]!,
        `DFB writer: block ${i}`,
      );
      const from = Math.max(offset, i * bs);
      const to = Math.min(fileEnd, (i + 1) * bs);
      data.copy(out, from - offset, from - i * bs, to - i * bs);
    }
    return out;
  }

  /** Stops the workers, closes and removes the partial file. */
  async abort(): Promise<void> {
    this.closed = true;
    await this.pool?.close().catch(() => undefined);
    this.pool = undefined;
    await this.earlySync?.catch(() => undefined);
    await this.fh?.close().catch(() => undefined);
    this.fh = undefined;
    await unlink(this.path).catch(() => undefined);
    this.batch = [];
    this.inflight.length = 0;
  }
}

/** The buffers of `bufs` after the first `n` bytes. */
function skip(bufs: Buffer[], n: number): Buffer[] {
  if (n === 0) return bufs;
  const out: Buffer[] = [];
  for (const b of bufs) {
    if (n >= b.length) {
      n -= b.length;
      continue;
    }
    out.push(n ? b.subarray(n) : b);
    n = 0;
  }
  return out;
}
