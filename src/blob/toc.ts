import { DfError } from '../errors.js';
import { B, D, I, MAX_NAME_LENGTH, X } from './toc-layout.js';
import {
  compareBytes,
  parseSections,
  TWO32,
  validateBlocks,
  validatePrefetch,
  validateTree,
  type PrefetchRange,
} from './toc-validate.js';
import { Codec, EntryType, InodeFlags } from './types.js';

export { lz4Bound, type PrefetchRange } from './toc-validate.js';

export interface BlockInfo {
  /** Offset of the stored bytes in the blob. */
  offset: number;
  storedLength: number;
  /** Offset of the first uncompressed byte in the data stream. */
  streamOffset: number;
  /** Uncompressed length. */
  length: number;
  codec: Codec;
  /** SHA-256 of the stored bytes (a copy). */
  sha256: Buffer;
}

export interface InodeStat {
  ino: number;
  type: EntryType;
  /** Permission bits (07777), no file type bits. */
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  /** Regular file: content length; symlink: target length in bytes; others 0. */
  size: number;
  nlink: number;
  /** Regular file: offset of its content in the uncompressed data stream; others 0. */
  dataOffset: number;
  devMajor: number;
  devMinor: number;
  opaque: boolean;
  implicit: boolean;
}

/**
 * A decoded, validated TOC. All data stays in the decompressed buffer and is read through a DataView;
 * only block offsets are precomputed (two Float64Arrays). Objects are created only when asked for.
 */
export class Toc {
  readonly blockCount: number;
  readonly inodeCount: number;
  readonly direntCount: number;
  readonly xattrCount: number;
  /** Length of the uncompressed data stream. */
  readonly dataLength: number;
  /** Sum of the stored block lengths: where the TOC starts in the blob. */
  readonly storedDataLength: number;
  /**
   * Ranges of the data stream to fetch first when the layer is opened (format 1.1; sorted, disjoint, inside
   * the stream). Empty for blobs without them.
   */
  readonly prefetchRanges: readonly PrefetchRange[];

  private readonly dv: DataView;
  private readonly blockBase: number;
  private readonly blockRec: number;
  private readonly inodeBase: number;
  private readonly inodeRec: number;
  private readonly direntBase: number;
  private readonly direntRec: number;
  private readonly xattrBase: number;
  private readonly xattrRec: number;
  private readonly strBase: number;
  /** blobOffsets[i] = offset of block i in the blob; blobOffsets[n] = storedDataLength. */
  private readonly blobOffsets: Float64Array;
  /** streamOffsets[i] = first stream byte of block i; streamOffsets[n] = dataLength. */
  private readonly streamOffsets: Float64Array;
  /** Scratch space for encoding a looked-up name (lookups are synchronous, so one buffer suffices). */
  private readonly scratch = Buffer.allocUnsafe(MAX_NAME_LENGTH + 4);

  private constructor(readonly buffer: Buffer) {
    const s = parseSections(buffer);
    this.dv = s.dv;
    this.blockCount = s.blockCount;
    this.blockBase = s.blockBase;
    this.blockRec = s.blockRec;
    this.inodeCount = s.inodeCount;
    this.inodeBase = s.inodeBase;
    this.inodeRec = s.inodeRec;
    this.direntCount = s.direntCount;
    this.direntBase = s.direntBase;
    this.direntRec = s.direntRec;
    this.xattrCount = s.xattrCount;
    this.xattrBase = s.xattrBase;
    this.xattrRec = s.xattrRec;
    this.strBase = s.strBase;
    this.dataLength = s.dataLength;
    this.storedDataLength = s.storedDataLength;
    ({ blobOffsets: this.blobOffsets, streamOffsets: this.streamOffsets } = validateBlocks(s));
    validateTree(s);
    this.prefetchRanges = validatePrefetch(s);
  }

  /** Decodes and validates an uncompressed TOC. Throws DfError CORRUPT on any inconsistency. */
  static decode(buf: Buffer): Toc {
    try {
      return new Toc(buf);
    } catch (err) {
      if (err instanceof DfError) throw err;
      // Validation should catch everything first; never let a RangeError escape.
      throw DfError.corrupt(`DFB TOC: malformed (${(err as Error)?.message ?? String(err)})`, { cause: err });
    }
  }

  private rec(ino: number): number {
    if (!Number.isInteger(ino) || ino < 1 || ino > this.inodeCount) {
      throw DfError.notFound(`DFB TOC: no inode ${ino} (valid: 1..${this.inodeCount})`);
    }
    return this.inodeBase + (ino - 1) * this.inodeRec;
  }

  private typeOf(ino: number): EntryType {
    return this.dv.getUint8(this.inodeBase + (ino - 1) * this.inodeRec + I.type);
  }

  private str(off: number, len: number): string {
    return this.buffer.toString('utf8', this.strBase + off, this.strBase + off + len);
  }

  // ----------------------------------------------------------------- blocks

  block(i: number): BlockInfo {
    if (!Number.isInteger(i) || i < 0 || i >= this.blockCount) {
      throw DfError.invalidArgument(`DFB: no block ${i} (blob has ${this.blockCount})`);
    }
    const r = this.blockBase + i * this.blockRec;
    return {
      offset: this.blobOffsets[i]!,
      storedLength: this.blobOffsets[i + 1]! - this.blobOffsets[i]!,
      streamOffset: this.streamOffsets[i]!,
      length: this.streamOffsets[i + 1]! - this.streamOffsets[i]!,
      codec: this.dv.getUint8(r + B.codec),
      sha256: Buffer.from(this.buffer.subarray(r + B.sha256, r + B.sha256 + 32)),
    };
  }

  /** Offset of block i in the blob (i = blockCount gives the TOC offset). No allocation. */
  blockOffset(i: number): number {
    return this.blobOffsets[i] ?? this.noBlock(i);
  }

  /** Stream offset of block i (i = blockCount gives dataLength). No allocation. */
  blockStreamOffset(i: number): number {
    return this.streamOffsets[i] ?? this.noBlock(i);
  }

  /** Uncompressed length of block i. No allocation. */
  blockLength(i: number): number {
    return (this.streamOffsets[i + 1] ?? this.noBlock(i)) - (this.streamOffsets[i] ?? this.noBlock(i));
  }

  /** Stored length of block i. No allocation. */
  blockStoredLength(i: number): number {
    return (this.blobOffsets[i + 1] ?? this.noBlock(i)) - (this.blobOffsets[i] ?? this.noBlock(i));
  }

  /** Codec of block i. No allocation. */
  blockCodec(i: number): Codec {
    if (!(i >= 0 && i < this.blockCount)) this.noBlock(i);
    return this.dv.getUint8(this.blockBase + i * this.blockRec + B.codec);
  }

  /** The stored SHA-256 of block i, as a view into the TOC (do not modify). */
  blockSha256(i: number): Buffer {
    if (!(i >= 0 && i < this.blockCount)) this.noBlock(i);
    const r = this.blockBase + i * this.blockRec + B.sha256;
    return this.buffer.subarray(r, r + 32);
  }

  private noBlock(i: number): never {
    throw DfError.invalidArgument(`DFB: no block ${i} (blob has ${this.blockCount})`);
  }

  /** Block containing stream byte `pos` (binary search over the prefix sums). */
  blockAt(pos: number): number {
    if (!(pos >= 0 && pos < this.dataLength)) {
      throw DfError.invalidArgument(`DFB: stream offset ${pos} outside 0..${this.dataLength}`);
    }
    const so = this.streamOffsets;
    let lo = 0;
    let hi = this.blockCount - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (so[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Blocks holding stream bytes [streamOffset, streamOffset+length): [first, lastInclusive]. length 0 gives [0, -1]. */
  blocksForRange(streamOffset: number, length: number): [number, number] {
    if (length === 0) return [0, -1];
    if (!(length > 0) || !(streamOffset >= 0) || streamOffset + length > this.dataLength) {
      throw DfError.invalidArgument(
        `DFB: stream range ${streamOffset}+${length} outside the data stream (${this.dataLength} bytes)`,
      );
    }
    return [this.blockAt(streamOffset), this.blockAt(streamOffset + length - 1)];
  }

  // ----------------------------------------------------------------- inodes

  stat(ino: number): InodeStat {
    const r = this.rec(ino);
    const dv = this.dv;
    const type = dv.getUint8(r + I.type) as EntryType;
    const flags = dv.getUint8(r + I.flags);
    const a = dv.getUint32(r + I.a, true);
    const b = dv.getUint32(r + I.b, true);
    const isDev = type === EntryType.CharDev || type === EntryType.BlockDev;
    return {
      ino,
      type,
      mode: dv.getUint32(r + I.mode, true),
      uid: dv.getUint32(r + I.uid, true),
      gid: dv.getUint32(r + I.gid, true),
      mtimeSec: dv.getInt32(r + I.mtimeSec + 4, true) * TWO32 + dv.getUint32(r + I.mtimeSec, true),
      mtimeNsec: dv.getUint32(r + I.mtimeNsec, true),
      size: dv.getUint32(r + I.size + 4, true) * TWO32 + dv.getUint32(r + I.size, true),
      nlink: dv.getUint32(r + I.nlink, true),
      dataOffset: type === EntryType.File ? b * TWO32 + a : 0,
      devMajor: isDev ? a : 0,
      devMinor: isDev ? b : 0,
      opaque: type === EntryType.Dir && (flags & InodeFlags.opaque) !== 0,
      implicit: type === EntryType.Dir && (flags & InodeFlags.implicit) !== 0,
    };
  }

  type(ino: number): EntryType {
    return this.dv.getUint8(this.rec(ino) + I.type);
  }

  /** Parent directory inode of a directory (root: 1). */
  parent(ino: number): number {
    const r = this.rec(ino);
    if (this.dv.getUint8(r + I.type) !== EntryType.Dir) {
      throw DfError.invalidArgument(
        `DFB TOC: inode ${ino} is not a directory (non-directories may have many parents)`,
      );
    }
    return this.dv.getUint32(r + I.parent, true);
  }

  readlink(ino: number): string {
    const r = this.rec(ino);
    if (this.dv.getUint8(r + I.type) !== EntryType.Symlink) {
      throw DfError.invalidArgument(`DFB TOC: inode ${ino} is not a symlink`);
    }
    return this.str(this.dv.getUint32(r + I.a, true), this.dv.getUint32(r + I.b, true));
  }

  xattrs(ino: number): Map<string, Buffer> {
    const r = this.rec(ino);
    const first = this.dv.getUint32(r + I.xattrFirst, true);
    const count = this.dv.getUint32(r + I.xattrCount, true);
    const out = new Map<string, Buffer>();
    for (let i = first; i < first + count; i++) {
      const x = this.xattrBase + i * this.xattrRec;
      const vo = this.strBase + this.dv.getUint32(x + X.valueOffset, true);
      const vl = this.dv.getUint32(x + X.valueLength, true);
      out.set(
        this.str(this.dv.getUint32(x + X.keyOffset, true), this.dv.getUint32(x + X.keyLength, true)),
        Buffer.from(this.buffer.subarray(vo, vo + vl)),
      );
    }
    return out;
  }

  // ----------------------------------------------------------------- directories

  private childRange(dirIno: number): [number, number] {
    const r = this.rec(dirIno);
    if (this.dv.getUint8(r + I.type) !== EntryType.Dir) {
      throw DfError.invalidArgument(`DFB TOC: inode ${dirIno} is not a directory`);
    }
    return [this.dv.getUint32(r + I.a, true), this.dv.getUint32(r + I.b, true)];
  }

  /** Child of a directory by name (binary search over its sorted dirents); undefined when absent. */
  lookupChild(dirIno: number, name: string | Uint8Array): number | undefined {
    const [first, count] = this.childRange(dirIno);
    if (typeof name !== 'string') return this.searchChild(first, count, name, name.length);
    const n = this.encodeKey(name);
    return n < 0 ? undefined : this.searchChild(first, count, this.scratch, n);
  }

  /** UTF-8 of a name component into the scratch buffer; -1 if it cannot be a stored name (too long). */
  private encodeKey(name: string): number {
    if (name.length > MAX_NAME_LENGTH) return -1;
    const n = this.scratch.write(name, 0, 'utf8');
    // write() stops early when the buffer is full; a name that long is not in the table anyway
    return n > MAX_NAME_LENGTH ? -1 : n;
  }

  private searchChild(first: number, count: number, key: Uint8Array, klen: number): number | undefined {
    const dv = this.dv;
    const buf = this.buffer;
    let lo = first;
    let hi = first + count - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const r = this.direntBase + mid * this.direntRec;
      const c = compareBytes(
        buf,
        this.strBase + dv.getUint32(r + D.nameOffset, true),
        dv.getUint32(r + D.nameLength, true),
        key,
        0,
        klen,
      );
      if (c === 0) return dv.getUint32(r + D.ino, true);
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return undefined;
  }

  /** Inode of a path ('a/b/c', leading '/' and '.' components ignored); undefined when absent. */
  lookup(path: string): number | undefined {
    let ino = 1;
    let start = 0;
    const len = path.length;
    while (start <= len) {
      let end = path.indexOf('/', start);
      if (end === -1) end = len;
      const n = end - start;
      if (n > 0 && !(n === 1 && path.charCodeAt(start) === 0x2e)) {
        const r = this.inodeBase + (ino - 1) * this.inodeRec;
        if (this.dv.getUint8(r + I.type) !== EntryType.Dir) return undefined;
        if (n === 2 && path.charCodeAt(start) === 0x2e && path.charCodeAt(start + 1) === 0x2e) {
          ino = this.dv.getUint32(r + I.parent, true);
        } else {
          const k = this.encodeKey(path.slice(start, end));
          if (k < 0) return undefined;
          const next = this.searchChild(
            this.dv.getUint32(r + I.a, true),
            this.dv.getUint32(r + I.b, true),
            this.scratch,
            k,
          );
          if (next === undefined) return undefined;
          ino = next;
        }
      }
      start = end + 1;
    }
    return ino;
  }

  /** Number of entries in a directory. */
  childCount(dirIno: number): number {
    return this.childRange(dirIno)[1];
  }

  /** Directory entries sorted by name bytes. */
  readdir(dirIno: number): Array<{ name: string; ino: number }> {
    const [first, count] = this.childRange(dirIno);
    const out = new Array<{ name: string; ino: number }>(count);
    for (let i = 0; i < count; i++) out[i] = this.dirent(first + i);
    return out;
  }

  private dirent(i: number): { name: string; ino: number } {
    const r = this.direntBase + i * this.direntRec;
    return {
      name: this.str(this.dv.getUint32(r + D.nameOffset, true), this.dv.getUint32(r + D.nameLength, true)),
      ino: this.dv.getUint32(r + D.ino, true),
    };
  }

  /** Every name depth-first, parents before children, children sorted; the root is not yielded. */
  *walk(): Generator<{ path: string; ino: number }> {
    const stack: Array<{ prefix: string; next: number; end: number }> = [];
    const push = (ino: number, prefix: string) => {
      const r = this.inodeBase + (ino - 1) * this.inodeRec;
      const first = this.dv.getUint32(r + I.a, true);
      stack.push({ prefix, next: first, end: first + this.dv.getUint32(r + I.b, true) });
    };
    push(1, '');
    while (stack.length) {
      const top = stack[stack.length - 1]!;
      if (top.next >= top.end) {
        stack.pop();
        continue;
      }
      const { name, ino } = this.dirent(top.next++);
      const path = top.prefix + name;
      yield { path, ino };
      if (this.typeOf(ino) === EntryType.Dir) push(ino, path + '/');
    }
  }
}
