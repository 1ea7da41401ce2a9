import { createHash, randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { DfError } from '../errors.js';
import { AccessOrderLayout } from './access-order.js';
import { BlockSink } from './block-sink.js';
import { ContentKey } from './content-key.js';
import { EntryTree, nodeFromMeta, type TreeNode } from './entry-tree.js';
import { encodeFooter, FORMAT_MINOR } from './footer.js';
import type { PrefetchEntry } from './prefetch-list.js';
import { encodeToc } from './toc-encoder.js';
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
  /**
   * Access-ordered layout (dfconvert --prefetch-list): the listed files the layer holds go first in the data
   * stream, in list order, and the TOC gets their prefetch ranges (format 1.1). Absent or empty: tar order,
   * no ranges, a 1.0 blob. See AccessOrderLayout for what it costs.
   */
  prefetch?: readonly PrefetchEntry[];
}

/** Files up to this size are buffered in memory to be hashed; larger ones are spooled to tmpDir. */
const SPOOL_THRESHOLD = 4 * 1024 * 1024;
/** Chunk size when replaying a spooled file, and when comparing a content with an earlier one. */
const SPOOL_READ = 1024 * 1024;
/**
 * Distinct contents kept per dedup key (size + CRC-64) as candidates to compare with. Real layers have one;
 * more only with crafted CRC collisions, whose further contents are then stored without dedup (correct, and
 * the comparisons stay bounded).
 */
const MAX_CANDIDATES = 4;

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
  private readonly tmpDir: string;
  private readonly signal: AbortSignal | undefined;
  private readonly onProgress: ((p: { bytesIn: number }) => void) | undefined;

  private readonly tree = new EntryTree();
  private readonly seen = new Map<string, number[]>(); // content key (ContentKey) -> data offsets of contents
  private readonly sizes = new Set<number>(); // sizes of the contents in the data stream
  private readonly spools = new Set<string>();
  private serial: Promise<void> = Promise.resolve();
  private failed: unknown;
  private state: 'open' | 'finishing' | 'done' | 'aborted' = 'open';

  private readonly sink: BlockSink;
  private readonly order: AccessOrderLayout | undefined;
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
    this.tmpDir = opts.tmpDir;
    this.signal = opts.signal;
    this.onProgress = opts.onProgress;
    this.sink = new BlockSink({
      path: this.partial,
      blockSize: bs,
      workers: opts.workers ?? 0,
      checkAbort: () => this.checkSignal(),
    });
    if (opts.prefetch?.length)
      this.order = new AccessOrderLayout(opts.tmpDir, opts.prefetch, () => this.checkSignal());
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

  /**
   * A regular file; `content` must yield exactly `meta.size` bytes. The writer may keep references to the
   * chunks until the returned promise settles, and no longer.
   */
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

  /**
   * Places one content in the data stream. Dedup is exact: a content whose size no earlier content has is
   * new and streams straight into the blocks (no buffering); one of an already seen size is buffered (or
   * spooled), and shares the extent of an earlier content only if their keys (size + CRC-64) match and the
   * bytes, read back from the stream, are equal. (The key is a filter, never trusted alone: an image can be
   * crafted to collide.)
   */
  private async writeContent(
    node: TreeNode,
    path: string,
    content: AsyncIterable<Uint8Array>,
  ): Promise<void> {
    const size = node.size;
    let got = 0;
    const tooLong = () =>
      DfError.invalidArgument(
        `DFB writer: content of ${JSON.stringify(path)} is longer than its size ${size}`,
      );
    if (this.order) {
      got = await this.order.add(node, content, (n) => this.progress(n));
      if (got > size) throw tooLong();
      return this.checkLength(path, got, size);
    }
    const key = new ContentKey();
    if (size > 0 && !this.sizes.has(size)) {
      this.sizes.add(size);
      node.dataOffset = this.sink.dataLength;
      for await (const c of content) {
        this.checkSignal();
        got += c.length;
        if (got > size) throw tooLong();
        const b = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
        key.update(b);
        this.progress(b.length);
        await this.sink.append(b);
      }
      this.checkLength(path, got, size);
      this.seen.set(key.key(size), [node.dataOffset]);
      return;
    }
    if (size <= SPOOL_THRESHOLD) {
      const chunks: Buffer[] = [];
      for await (const c of content) {
        this.checkSignal();
        got += c.length;
        if (got > size) throw tooLong();
        const b = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
        key.update(b);
        chunks.push(b); // held past the next read: readLayer keeps entries this small valid until they settle
        this.progress(b.length);
      }
      this.checkLength(path, got, size);
      if (size === 0) return;
      let whole: Buffer | undefined;
      const off = await this.dedupe(key.key(size), size, (pos, n) => {
        whole ??= chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, size);
        return Promise.resolve(whole.subarray(pos, pos + n));
      });
      if (off !== undefined) {
        node.dataOffset = off;
        return;
      }
      node.dataOffset = this.sink.dataLength;
      for (const c of chunks) await this.sink.append(c);
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
        key.update(Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength));
        await fh.write(c);
        this.progress(c.length);
      }
      this.checkLength(path, got, size);
      const spooled = fh;
      const readSpool = async (pos: number, n: number): Promise<Buffer> => {
        const buf = Buffer.allocUnsafe(n);
        let have = 0;
        while (have < n) {
          const { bytesRead } = await spooled.read(buf, have, n - have, pos + have);
          if (bytesRead <= 0) throw DfError.from(new Error(`spool file ${spool} shrank`), 'DFB writer');
          have += bytesRead;
        }
        return buf;
      };
      const off = await this.dedupe(key.key(size), size, readSpool);
      if (off !== undefined) {
        node.dataOffset = off;
        return;
      }
      node.dataOffset = this.sink.dataLength;
      for (let pos = 0; pos < size;) {
        this.checkSignal();
        const n = Math.min(SPOOL_READ, size - pos);
        await this.sink.append(await readSpool(pos, n));
        pos += n;
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

  /**
   * The offset of an identical content already in the stream (same key, equal bytes), or undefined after
   * recording this content as the next one in the stream. `mine(pos, n)` returns bytes of this content.
   */
  private async dedupe(
    key: string,
    size: number,
    mine: (pos: number, n: number) => Promise<Buffer>,
  ): Promise<number | undefined> {
    const offsets = this.seen.get(key);
    for (const at of offsets ?? []) {
      if (await this.sameContent(at, size, mine)) {
        this.dedupedFiles++;
        return at;
      }
    }
    if (!offsets) this.seen.set(key, [this.sink.dataLength]);
    else if (offsets.length < MAX_CANDIDATES) offsets.push(this.sink.dataLength);
    return undefined;
  }

  /** Whether the stream's bytes [at, at + size) equal this content, compared piece by piece. */
  private async sameContent(
    at: number,
    size: number,
    mine: (pos: number, n: number) => Promise<Buffer>,
  ): Promise<boolean> {
    for (let pos = 0; pos < size;) {
      this.checkSignal();
      const n = Math.min(SPOOL_READ, size - pos);
      const theirs = await this.sink.readData(at + pos, n);
      if (!theirs.equals(await mine(pos, n))) return false;
      pos += n;
    }
    return true;
  }

  private progress(n: number): void {
    this.bytesIn += n;
    this.onProgress?.({ bytesIn: this.bytesIn });
  }

  // ------------------------------------------------------------------ finish / abort

  async finish(): Promise<WriteResult> {
    this.checkOpen();
    this.state = 'finishing';
    try {
      await this.serial;
      if (this.failed) throw this.failed;
      this.checkSignal();
      const prefetchRanges = await this.order?.place(this.tree, this.sink, this.blockSize);
      await this.order?.dispose();
      this.dedupedFiles += this.order?.deduped ?? 0;
      await this.sink.endBlocks();
      this.checkSignal();

      const enc = encodeToc({
        root: this.tree.root,
        blockRecords: this.sink.blockTable(),
        blockCount: this.sink.blockCount,
        dataLength: this.sink.dataLength,
        storedDataLength: this.sink.storedDataLength,
        prefetchRanges,
      });
      const stored = deflateSync(enc.toc);
      const tocSha = createHash('sha256').update(stored).digest();
      const tocOffset = this.sink.storedDataLength;
      await this.sink.emit(stored);
      await this.sink.emit(
        encodeFooter({
          minor: prefetchRanges?.length ? FORMAT_MINOR : undefined,
          flags: 0,
          blockSize: this.blockSize,
          tocCodec: TocCodec.Zlib,
          tocOffset,
          tocStoredLength: stored.length,
          tocLength: enc.toc.length,
          tocSha256: tocSha,
        }),
      );
      const { size, digest } = await this.sink.close();
      await rename(this.partial, this.out);
      this.state = 'done';
      return {
        digest,
        size,
        tocDigest: 'sha256:' + tocSha.toString('hex'),
        tocOffset,
        tocSize: stored.length,
        blockSize: this.blockSize,
        blocks: this.sink.blockCount,
        dataBytes: this.sink.dataLength,
        storedDataBytes: this.sink.storedDataLength,
        files: enc.files,
        entries: enc.dirents,
        dedupedFiles: this.dedupedFiles,
      };
    } catch (err) {
      this.failed ??= err;
      await this.order?.dispose();
      throw DfError.from(err, 'DFB writer');
    }
  }

  /** Stops writing and removes the partial output and temp files. Safe to call at any time, more than once. */
  async abort(): Promise<void> {
    if (this.state === 'done' || this.state === 'aborted') return;
    this.state = 'aborted';
    this.failed ??= DfError.aborted('DFB writer aborted');
    await this.sink.abort();
    await this.order?.dispose();
    for (const s of this.spools) await unlink(s).catch(() => undefined);
    this.spools.clear();
  }
}
