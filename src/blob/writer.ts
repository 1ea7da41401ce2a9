import { createHash, randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { DfError } from '../errors.js';
import { compressBlock, type CompressedBlock } from './block-codec.js';
import { CompressPool } from './compress-pool.js';
import { EntryTree, nodeFromMeta, type TreeNode } from './entry-tree.js';
import { encodeFooter } from './footer.js';
import { encodeToc } from './toc-encoder.js';
import { B } from './toc-layout.js';
import {
  DEFAULT_BLOCK_SIZE,
  EntryType,
  MAX_BLOCK_SIZE,
  MIN_BLOCK_SIZE,
  TocCodec,
  type EntryMeta,
  type WriteResult,
} from './types.js';

export type { EntryMeta, WriteResult } from './types.js';

export interface DfbWriterOptions {
  /** Path of the blob file to write (written as `<out>.partial`, renamed by finish()). */
  out: string;
  /** Uncompressed block size: a power of two, 16 KiB..4 MiB. Default 64 KiB. */
  blockSize?: number;
  /** Compression worker threads; 0 or absent = os.availableParallelism(). */
  workers?: number;
  /** Directory for spooling large files while they are hashed. */
  tmpDir: string;
  signal?: AbortSignal;
  onProgress?: (p: { bytesIn: number }) => void;
}

/** Files up to this size are buffered in memory to be hashed; larger ones are spooled to tmpDir. */
const SPOOL_THRESHOLD = 4 * 1024 * 1024;
/** Output writes are batched up to this many bytes. */
const WRITE_BATCH = 1024 * 1024;
/** Chunk size when replaying a spooled file. */
const SPOOL_READ = 1024 * 1024;

/**
 * Writes a DFB blob (docs/format.md) from a stream of tar entries.
 *
 * Tree operations (addEntry, markOpaque, addHardlink and the tree part of addFile) take effect at call
 * time; file contents are appended to the data stream in call order. Memory is bounded: files larger
 * than SPOOL_THRESHOLD are spooled to disk, and at most a few blocks per worker are in flight.
 * Output bytes depend only on the sequence of calls (not on worker count or timing).
 */
export class DfbWriter {
  private readonly out: string;
  private readonly partial: string;
  private readonly blockSize: number;
  private readonly workers: number;
  private readonly tmpDir: string;
  private readonly signal: AbortSignal | undefined;
  private readonly onProgress: ((p: { bytesIn: number }) => void) | undefined;

  private readonly tree = new EntryTree();
  private readonly seen = new Map<string, number>(); // content sha256 (binary string) -> data offset
  private readonly spools = new Set<string>();
  private serial: Promise<void> = Promise.resolve();
  private failed: unknown;
  private state: 'open' | 'finishing' | 'done' | 'aborted' = 'open';

  private pool: CompressPool | undefined;
  private readonly inflight: Array<Promise<CompressedBlock>> = [];
  private maxInflight = 8;
  private cur: Buffer;
  private curLen = 0;

  private fh: FileHandle | undefined;
  private writePos = 0;
  private batch: Buffer[] = [];
  private batchBytes = 0;
  private readonly blobHash = createHash('sha256');
  private blockRecords: Buffer[] = [];
  private blockCount = 0;

  private dataLength = 0;
  private storedDataLength = 0;
  private bytesIn = 0;
  private dedupedFiles = 0;

  constructor(opts: DfbWriterOptions) {
    const bs = opts.blockSize ?? DEFAULT_BLOCK_SIZE;
    if (!Number.isInteger(bs) || bs < MIN_BLOCK_SIZE || bs > MAX_BLOCK_SIZE || (bs & (bs - 1)) !== 0) {
      throw DfError.invalidArgument(
        `DFB writer: block size ${bs} is not a power of two between 16 KiB and 4 MiB`,
      );
    }
    if (!opts.out) throw DfError.invalidArgument('DFB writer: no output path');
    this.out = opts.out;
    this.partial = `${opts.out}.partial`;
    this.blockSize = bs;
    this.workers = opts.workers ?? 0;
    this.tmpDir = opts.tmpDir;
    this.signal = opts.signal;
    this.onProgress = opts.onProgress;
    this.cur = Buffer.allocUnsafeSlow(bs);
  }

  // ------------------------------------------------------------------ tree

  private checkOpen(): void {
    if (this.failed) throw DfError.from(this.failed, 'DFB writer: an earlier operation failed');
    if (this.state !== 'open') throw DfError.invalidArgument(`DFB writer: already ${this.state}`);
    this.checkSignal();
  }

  private checkSignal(): void {
    if (this.signal?.aborted) throw DfError.aborted('DFB writer: aborted');
    if (this.state === 'aborted') throw DfError.aborted('DFB writer: aborted');
  }

  /** Directories, symlinks, devices, fifos, whiteouts (path = the whited-out name, without `.wh.`). */
  addEntry(meta: EntryMeta): void {
    this.checkOpen();
    this.tree.put(meta.path, nodeFromMeta(meta));
  }

  /** Marks a directory opaque (`.wh..wh..opq`), creating it implicitly if needed. */
  markOpaque(dirPath: string): void {
    this.checkOpen();
    this.tree.markOpaque(dirPath);
  }

  /** Adds `path` as another name of the inode at `targetPath` (which must exist and not be a directory). */
  addHardlink(path: string, targetPath: string): void {
    this.checkOpen();
    const target = this.tree.get(targetPath);
    if (!target) {
      throw DfError.invalidArgument(
        `DFB writer: hard link ${JSON.stringify(path)} points to ${JSON.stringify(targetPath)}, which is not in the layer (yet)`,
      );
    }
    if (target.type === EntryType.Dir) {
      throw DfError.invalidArgument(`DFB writer: hard link ${JSON.stringify(path)} points to a directory`);
    }
    if (this.tree.get(path) === target) return;
    this.tree.link(path, target);
  }

  /** A regular file; `content` must yield exactly `meta.size` bytes. */
  addFile(meta: EntryMeta & { size: number }, content: AsyncIterable<Uint8Array>): Promise<void> {
    try {
      this.checkOpen();
      if (!Number.isSafeInteger(meta.size) || meta.size < 0) {
        throw DfError.invalidArgument(`DFB writer: bad size ${meta.size} for ${meta.path}`);
      }
    } catch (err) {
      return Promise.reject(err);
    }
    let node: TreeNode;
    try {
      node = nodeFromMeta(meta, EntryType.File);
      node.size = meta.size;
      this.tree.put(meta.path, node);
    } catch (err) {
      return Promise.reject(err);
    }
    const run = this.serial.then(() => {
      if (this.failed) throw this.failed;
      return this.writeContent(node, meta.path, content).catch((err) => {
        throw DfError.from(err, `DFB writer: ${meta.path}`);
      });
    });
    this.serial = run.catch((err) => {
      this.failed ??= err;
    });
    return run;
  }

  private async writeContent(
    node: TreeNode,
    path: string,
    content: AsyncIterable<Uint8Array>,
  ): Promise<void> {
    const size = node.size;
    const hash = createHash('sha256');
    let got = 0;
    const tooLong = () =>
      DfError.invalidArgument(
        `DFB writer: content of ${JSON.stringify(path)} is longer than its size ${size}`,
      );
    if (size <= SPOOL_THRESHOLD) {
      const chunks: Buffer[] = [];
      for await (const c of content) {
        this.checkSignal();
        got += c.length;
        if (got > size) throw tooLong();
        const b = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
        hash.update(b);
        chunks.push(b);
        this.progress(b.length);
      }
      this.checkLength(path, got, size);
      if (size === 0) return;
      const off = this.dedupe(hash.digest('base64'));
      if (off !== undefined) {
        node.dataOffset = off;
        return;
      }
      node.dataOffset = this.dataLength;
      for (const c of chunks) await this.appendData(c);
      return;
    }
    const spool = join(this.tmpDir, `dfb-spool-${process.pid}-${randomBytes(6).toString('hex')}`);
    this.spools.add(spool);
    let fh: FileHandle | undefined;
    try {
      fh = await open(spool, 'w+');
      for await (const c of content) {
        this.checkSignal();
        got += c.length;
        if (got > size) throw tooLong();
        hash.update(c);
        await fh.write(c);
        this.progress(c.length);
      }
      this.checkLength(path, got, size);
      const off = this.dedupe(hash.digest('base64'));
      if (off !== undefined) {
        node.dataOffset = off;
        return;
      }
      node.dataOffset = this.dataLength;
      let pos = 0;
      while (pos < size) {
        this.checkSignal();
        const n = Math.min(SPOOL_READ, size - pos);
        const buf = Buffer.allocUnsafe(n);
        const { bytesRead } = await fh.read(buf, 0, n, pos);
        if (bytesRead <= 0) throw DfError.from(new Error(`spool file ${spool} shrank`), 'DFB writer');
        await this.appendData(bytesRead === n ? buf : buf.subarray(0, bytesRead));
        pos += bytesRead;
      }
    } finally {
      await fh?.close().catch(() => undefined);
      await unlink(spool).catch(() => undefined);
      this.spools.delete(spool);
    }
  }

  private checkLength(path: string, got: number, size: number): void {
    if (got !== size) {
      throw DfError.invalidArgument(
        `DFB writer: content of ${JSON.stringify(path)} is ${got} bytes, size says ${size}`,
      );
    }
  }

  /** Returns the offset of identical content already in the stream, or records this content at the end. */
  private dedupe(digest: string): number | undefined {
    const at = this.seen.get(digest);
    if (at !== undefined) {
      this.dedupedFiles++;
      return at;
    }
    this.seen.set(digest, this.dataLength);
    return undefined;
  }

  private progress(n: number): void {
    this.bytesIn += n;
    this.onProgress?.({ bytesIn: this.bytesIn });
  }

  // ------------------------------------------------------------------ blocks

  private async appendData(data: Buffer): Promise<void> {
    let pos = 0;
    while (pos < data.length) {
      const n = Math.min(this.blockSize - this.curLen, data.length - pos);
      data.copy(this.cur, this.curLen, pos, pos + n);
      this.curLen += n;
      pos += n;
      this.dataLength += n;
      if (this.curLen === this.blockSize) {
        const full = this.cur;
        this.cur = Buffer.allocUnsafeSlow(this.blockSize);
        this.curLen = 0;
        await this.submitBlock(full);
      }
    }
  }

  private async submitBlock(data: Buffer): Promise<void> {
    if (!this.pool) {
      this.pool = new CompressPool(this.workers);
      this.maxInflight = Math.max(4, 4 * this.pool.size); // bounds memory: ~2 x maxInflight x blockSize
    }
    const p = this.pool.compress(data);
    p.catch(() => undefined); // awaited in order below; avoid an unhandled rejection meanwhile
    this.inflight.push(p);
    while (this.inflight.length >= this.maxInflight) await this.writeNextBlock();
  }

  private async writeNextBlock(): Promise<void> {
    const r = await this.inflight.shift()!;
    await this.writeBlock(r);
  }

  private async writeBlock(r: CompressedBlock): Promise<void> {
    const rec = Buffer.alloc(B.SIZE);
    rec.writeUInt32LE(r.stored.length, B.storedLength);
    rec.writeUInt32LE(
      r.codec === 0 ? r.stored.length : r.stored.readUInt32LE(0), // uncompressed length
      B.length,
    );
    rec.writeUInt8(r.codec, B.codec);
    r.sha256.copy(rec, B.sha256);
    this.blockRecords.push(rec);
    this.blockCount++;
    this.storedDataLength += r.stored.length;
    await this.emit(r.stored);
  }

  private async emit(buf: Buffer): Promise<void> {
    this.blobHash.update(buf);
    this.batch.push(buf);
    this.batchBytes += buf.length;
    if (this.batchBytes >= WRITE_BATCH) await this.flushWrites();
  }

  private async flushWrites(): Promise<void> {
    if (!this.batchBytes) return;
    this.checkSignal();
    if (!this.fh) {
      const fh = await open(this.partial, 'w');
      if (this.state === 'aborted') {
        await fh.close();
        await unlink(this.partial).catch(() => undefined);
        throw DfError.aborted('DFB writer: aborted');
      }
      this.fh = fh;
    }
    const bufs = this.batch;
    const total = this.batchBytes;
    this.batch = [];
    this.batchBytes = 0;
    let written = 0;
    while (written < total) {
      const { bytesWritten } = await this.fh!.writev(skip(bufs, written), this.writePos + written);
      written += bytesWritten;
    }
    this.writePos += total;
  }

  // ------------------------------------------------------------------ finish / abort

  async finish(): Promise<WriteResult> {
    this.checkOpen();
    this.state = 'finishing';
    try {
      await this.serial;
      if (this.failed) throw this.failed;
      this.checkSignal();
      if (this.curLen > 0) {
        const last = this.cur.subarray(0, this.curLen);
        if (this.pool) {
          const own = Buffer.allocUnsafeSlow(this.curLen);
          last.copy(own);
          await this.submitBlock(own);
        } else {
          // Small blob: one block, no need to start worker threads for it.
          while (this.inflight.length) await this.writeNextBlock();
          await this.writeBlock(compressBlock(last));
        }
        this.curLen = 0;
      }
      while (this.inflight.length) await this.writeNextBlock();
      this.checkSignal();

      const enc = encodeToc({
        root: this.tree.root,
        blockRecords: Buffer.concat(this.blockRecords),
        blockCount: this.blockCount,
        dataLength: this.dataLength,
        storedDataLength: this.storedDataLength,
      });
      this.blockRecords = [];
      const stored = deflateSync(enc.toc);
      const tocSha = createHash('sha256').update(stored).digest();
      const tocOffset = this.storedDataLength;
      await this.emit(stored);
      await this.emit(
        encodeFooter({
          flags: 0,
          blockSize: this.blockSize,
          tocCodec: TocCodec.Zlib,
          tocOffset,
          tocStoredLength: stored.length,
          tocLength: enc.toc.length,
          tocSha256: tocSha,
        }),
      );
      await this.flushWrites();
      const size = this.writePos;
      await this.fh!.sync();
      await this.fh!.close();
      this.fh = undefined;
      await rename(this.partial, this.out);
      await this.pool?.close();
      this.pool = undefined;
      this.state = 'done';
      return {
        digest: 'sha256:' + this.blobHash.digest('hex'),
        size,
        tocDigest: 'sha256:' + tocSha.toString('hex'),
        tocOffset,
        tocSize: stored.length,
        blockSize: this.blockSize,
        blocks: this.blockCount,
        dataBytes: this.dataLength,
        storedDataBytes: this.storedDataLength,
        files: enc.files,
        entries: enc.dirents,
        dedupedFiles: this.dedupedFiles,
      };
    } catch (err) {
      this.failed ??= err;
      throw DfError.from(err, 'DFB writer');
    }
  }

  /** Stops writing and removes the partial output and temp files. Safe to call at any time, more than once. */
  async abort(): Promise<void> {
    if (this.state === 'done' || this.state === 'aborted') return;
    this.state = 'aborted';
    this.failed ??= DfError.aborted('DFB writer aborted');
    await this.pool?.close().catch(() => undefined);
    this.pool = undefined;
    await this.fh?.close().catch(() => undefined);
    this.fh = undefined;
    await unlink(this.partial).catch(() => undefined);
    for (const s of this.spools) await unlink(s).catch(() => undefined);
    this.spools.clear();
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
