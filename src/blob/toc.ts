import { isUtf8 } from 'node:buffer';
import { DfError } from '../errors.js';
import { B, D, H, I, MAX_NAME_LENGTH, TOC_MAGIC, X } from './toc-layout.js';
import { Codec, EntryType, InodeFlags, MAX_BLOCK_LENGTH } from './types.js';

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

const TWO32 = 0x1_0000_0000;
const MAX_HI = 0x1f_ffff; // keeps a u64 / i64 within Number.MAX_SAFE_INTEGER

const corrupt = (msg: string) => DfError.corrupt(`DFB TOC: ${msg}`);

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
    const buf = buffer;
    if (buf.length < H.SIZE) throw corrupt(`too short (${buf.length} bytes)`);
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.dv = dv;
    const u32 = (o: number) => dv.getUint32(o, true);
    if (u32(H.magic) !== TOC_MAGIC) throw corrupt('bad magic');
    const headerSize = u32(H.headerSize);
    this.blockCount = u32(H.blockCount);
    this.blockRec = u32(H.blockRecordSize);
    this.inodeCount = u32(H.inodeCount);
    this.inodeRec = u32(H.inodeRecordSize);
    this.direntCount = u32(H.direntCount);
    this.direntRec = u32(H.direntRecordSize);
    this.xattrCount = u32(H.xattrCount);
    this.xattrRec = u32(H.xattrRecordSize);
    const stringsLength = u32(H.stringsLength);
    this.dataLength = this.u64(H.dataLength, 'data length');
    this.storedDataLength = this.u64(H.storedDataLength, 'stored data length');
    if (headerSize < H.SIZE) throw corrupt(`header size ${headerSize} < ${H.SIZE}`);
    if (
      this.blockRec < B.SIZE ||
      this.inodeRec < I.SIZE ||
      this.direntRec < D.SIZE ||
      this.xattrRec < X.SIZE
    ) {
      throw corrupt('record size smaller than this version defines');
    }
    this.blockBase = headerSize;
    this.inodeBase = this.blockBase + this.blockCount * this.blockRec;
    this.direntBase = this.inodeBase + this.inodeCount * this.inodeRec;
    this.xattrBase = this.direntBase + this.direntCount * this.direntRec;
    this.strBase = this.xattrBase + this.xattrCount * this.xattrRec;
    const total = this.strBase + stringsLength;
    if (total !== buf.length) {
      throw corrupt(`section sizes add up to ${total} bytes but the TOC is ${buf.length} bytes`);
    }
    if (this.inodeCount < 1) throw corrupt('no root inode');
    this.blobOffsets = new Float64Array(this.blockCount + 1);
    this.streamOffsets = new Float64Array(this.blockCount + 1);
    this.validateBlocks();
    this.validateTree(stringsLength);
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

  private u64(off: number, what: string): number {
    const lo = this.dv.getUint32(off, true);
    const hi = this.dv.getUint32(off + 4, true);
    if (hi > MAX_HI) throw corrupt(`${what} out of range`);
    return hi * TWO32 + lo;
  }

  private validateBlocks(): void {
    const dv = this.dv;
    let blob = 0;
    let stream = 0;
    for (let i = 0; i < this.blockCount; i++) {
      const r = this.blockBase + i * this.blockRec;
      const stored = dv.getUint32(r + B.storedLength, true);
      const len = dv.getUint32(r + B.length, true);
      const codec = dv.getUint8(r + B.codec);
      if (len === 0 || len > MAX_BLOCK_LENGTH) throw corrupt(`block ${i}: bad uncompressed length ${len}`);
      if (codec === Codec.Raw) {
        if (stored !== len)
          throw corrupt(`block ${i}: raw block with stored length ${stored} != length ${len}`);
      } else if (codec === Codec.Lz4Block) {
        if (stored < 5 || stored > lz4Bound(len) + 4) {
          throw corrupt(`block ${i}: LZ4 stored length ${stored} impossible for length ${len}`);
        }
      } else {
        throw corrupt(`block ${i}: unknown codec ${codec}`);
      }
      this.blobOffsets[i] = blob;
      this.streamOffsets[i] = stream;
      blob += stored;
      stream += len;
    }
    this.blobOffsets[this.blockCount] = blob;
    this.streamOffsets[this.blockCount] = stream;
    if (blob !== this.storedDataLength) {
      throw corrupt(`block stored lengths add up to ${blob}, header says ${this.storedDataLength}`);
    }
    if (stream !== this.dataLength) {
      throw corrupt(`block lengths add up to ${stream}, header says ${this.dataLength}`);
    }
  }

  private validateTree(stringsLength: number): void {
    const dv = this.dv;
    const n = this.inodeCount;
    const nd = this.direntCount;
    const buf = this.buffer;
    // --- inodes
    let xattrCursor = 0;
    let dirs = 0;
    for (let ino = 1; ino <= n; ino++) {
      const r = this.inodeBase + (ino - 1) * this.inodeRec;
      const type = dv.getUint8(r + I.type);
      const mode = dv.getUint32(r + I.mode, true);
      const nsec = dv.getUint32(r + I.mtimeNsec, true);
      const secHi = dv.getInt32(r + I.mtimeSec + 4, true);
      const sizeHi = dv.getUint32(r + I.size + 4, true);
      const a = dv.getUint32(r + I.a, true);
      const b = dv.getUint32(r + I.b, true);
      const parent = dv.getUint32(r + I.parent, true);
      const xFirst = dv.getUint32(r + I.xattrFirst, true);
      const xCount = dv.getUint32(r + I.xattrCount, true);
      if (type < EntryType.File || type > EntryType.Whiteout)
        throw corrupt(`inode ${ino}: unknown type ${type}`);
      if (mode > 0o7777) throw corrupt(`inode ${ino}: mode ${mode.toString(8)} has bits outside 07777`);
      if (nsec >= 1e9) throw corrupt(`inode ${ino}: mtime nanoseconds ${nsec} >= 1e9`);
      if (secHi > MAX_HI || secHi < -MAX_HI - 1) throw corrupt(`inode ${ino}: mtime out of range`);
      if (sizeHi > MAX_HI) throw corrupt(`inode ${ino}: size out of range`);
      const size = sizeHi * TWO32 + dv.getUint32(r + I.size, true);
      if (ino === 1 && type !== EntryType.Dir) throw corrupt('inode 1 (root) is not a directory');
      if (xFirst !== xattrCursor || xCount > this.xattrCount - xattrCursor) {
        throw corrupt(`inode ${ino}: xattr range ${xFirst}+${xCount} does not follow the previous inode's`);
      }
      xattrCursor += xCount;
      switch (type) {
        case EntryType.File: {
          if (b > MAX_HI) throw corrupt(`inode ${ino}: data offset out of range`);
          const off = b * TWO32 + a;
          if (off + size > this.dataLength) {
            throw corrupt(
              `inode ${ino}: data ${off}+${size} past the end of the data stream (${this.dataLength})`,
            );
          }
          break;
        }
        case EntryType.Dir:
          dirs++;
          if (size !== 0) throw corrupt(`inode ${ino}: directory with size ${size}`);
          if (a > nd || b > nd - a)
            throw corrupt(`inode ${ino}: child range ${a}+${b} outside ${nd} dirents`);
          if (parent < 1 || parent > n) throw corrupt(`inode ${ino}: parent ${parent} out of range`);
          if (ino === 1 && parent !== 1) throw corrupt('root directory parent is not itself');
          break;
        case EntryType.Symlink:
          if (a > stringsLength || b > stringsLength - a)
            throw corrupt(`inode ${ino}: symlink target out of range`);
          if (size !== b) throw corrupt(`inode ${ino}: symlink size ${size} != target length ${b}`);
          if (!isUtf8(buf.subarray(this.strBase + a, this.strBase + a + b))) {
            throw corrupt(`inode ${ino}: symlink target is not valid UTF-8`);
          }
          break;
        default:
          if (size !== 0) throw corrupt(`inode ${ino}: type ${type} with size ${size}`);
      }
      if (type !== EntryType.Dir && parent !== 0)
        throw corrupt(`inode ${ino}: non-directory with a parent field`);
    }
    if (xattrCursor !== this.xattrCount) {
      throw corrupt(`inodes claim ${xattrCursor} xattrs, table has ${this.xattrCount}`);
    }
    // --- dirents: refs in range, names well formed
    const refs = new Uint32Array(n + 1);
    for (let i = 0; i < nd; i++) {
      const r = this.direntBase + i * this.direntRec;
      const off = dv.getUint32(r + D.nameOffset, true);
      const len = dv.getUint32(r + D.nameLength, true);
      const ino = dv.getUint32(r + D.ino, true);
      if (len === 0 || len > MAX_NAME_LENGTH || off > stringsLength || len > stringsLength - off) {
        throw corrupt(`dirent ${i}: name reference ${off}+${len} invalid`);
      }
      if (ino < 2 || ino > n) throw corrupt(`dirent ${i}: inode ${ino} out of range`);
      const s = this.strBase + off;
      const nameBuf = buf.subarray(s, s + len);
      if (nameBuf.indexOf(0x2f) !== -1 || nameBuf.indexOf(0) !== -1) {
        throw corrupt(`dirent ${i}: name contains '/' or NUL`);
      }
      if ((len === 1 && nameBuf[0] === 0x2e) || (len === 2 && nameBuf[0] === 0x2e && nameBuf[1] === 0x2e)) {
        throw corrupt(`dirent ${i}: name is '.' or '..'`);
      }
      if (!isUtf8(nameBuf)) throw corrupt(`dirent ${i}: name is not valid UTF-8`);
      refs[ino]!++;
    }
    // --- directory child ranges: disjoint, covering all dirents, sorted strictly, parent links consistent
    const owner = new Uint32Array(nd);
    const subdirs = new Uint32Array(n + 1);
    let owned = 0;
    for (let dir = 1; dir <= n; dir++) {
      const r = this.inodeBase + (dir - 1) * this.inodeRec;
      if (dv.getUint8(r + I.type) !== EntryType.Dir) continue;
      const first = dv.getUint32(r + I.a, true);
      const count = dv.getUint32(r + I.b, true);
      for (let i = first; i < first + count; i++) {
        if (owner[i] !== 0) throw corrupt(`dirent ${i} is claimed by directories ${owner[i]} and ${dir}`);
        owner[i] = dir;
        owned++;
        if (i > first && this.compareNames(i - 1, i) >= 0) {
          throw corrupt(
            `directory ${dir}: entries ${i - 1} and ${i} are not in strictly ascending name order`,
          );
        }
        const child = this.direntIno(i);
        const cr = this.inodeBase + (child - 1) * this.inodeRec;
        if (dv.getUint8(cr + I.type) === EntryType.Dir) {
          if (refs[child] !== 1) throw corrupt(`directory inode ${child} has ${refs[child]} names`);
          if (dv.getUint32(cr + I.parent, true) !== dir) {
            throw corrupt(`directory inode ${child} is listed in ${dir} but its parent field says otherwise`);
          }
          subdirs[dir]!++;
        }
      }
    }
    if (owned !== nd) throw corrupt(`${nd - owned} dirents belong to no directory`);
    // --- reachability from the root (no cycles, no detached subtrees), nlink
    const stack: number[] = [1];
    let seen = 0;
    while (stack.length) {
      const dir = stack.pop()!;
      seen++;
      if (seen > dirs) throw corrupt('directory tree has a cycle');
      const r = this.inodeBase + (dir - 1) * this.inodeRec;
      const first = dv.getUint32(r + I.a, true);
      const count = dv.getUint32(r + I.b, true);
      for (let i = first; i < first + count; i++) {
        const child = this.direntIno(i);
        if (this.typeOf(child) === EntryType.Dir) stack.push(child);
      }
    }
    if (seen !== dirs) throw corrupt(`${dirs - seen} directories are not reachable from the root`);
    for (let ino = 1; ino <= n; ino++) {
      const r = this.inodeBase + (ino - 1) * this.inodeRec;
      const nlink = dv.getUint32(r + I.nlink, true);
      if (dv.getUint8(r + I.type) === EntryType.Dir) {
        if (nlink !== 2 + subdirs[ino]!)
          throw corrupt(`directory inode ${ino}: nlink ${nlink} != 2 + subdirectories`);
      } else {
        if (refs[ino] === 0) throw corrupt(`inode ${ino} has no name`);
        if (nlink !== refs[ino]) throw corrupt(`inode ${ino}: nlink ${nlink} but ${refs[ino]} names`);
      }
    }
    // --- xattrs
    for (let i = 0; i < this.xattrCount; i++) {
      const r = this.xattrBase + i * this.xattrRec;
      const ko = dv.getUint32(r + X.keyOffset, true);
      const kl = dv.getUint32(r + X.keyLength, true);
      const vo = dv.getUint32(r + X.valueOffset, true);
      const vl = dv.getUint32(r + X.valueLength, true);
      if (
        kl === 0 ||
        ko > stringsLength ||
        kl > stringsLength - ko ||
        vo > stringsLength ||
        vl > stringsLength - vo
      ) {
        throw corrupt(`xattr ${i}: reference out of range`);
      }
      if (!isUtf8(buf.subarray(this.strBase + ko, this.strBase + ko + kl))) {
        throw corrupt(`xattr ${i}: name is not valid UTF-8`);
      }
    }
    for (let ino = 1; ino <= n; ino++) {
      const r = this.inodeBase + (ino - 1) * this.inodeRec;
      const first = dv.getUint32(r + I.xattrFirst, true);
      const count = dv.getUint32(r + I.xattrCount, true);
      for (let i = first + 1; i < first + count; i++) {
        if (this.compareXattrKeys(i - 1, i) >= 0)
          throw corrupt(`inode ${ino}: xattr keys not strictly ascending`);
      }
    }
  }

  private compareNames(i: number, j: number): number {
    const dv = this.dv;
    const ri = this.direntBase + i * this.direntRec;
    const rj = this.direntBase + j * this.direntRec;
    return compareBytes(
      this.buffer,
      this.strBase + dv.getUint32(ri + D.nameOffset, true),
      dv.getUint32(ri + D.nameLength, true),
      this.buffer,
      this.strBase + dv.getUint32(rj + D.nameOffset, true),
      dv.getUint32(rj + D.nameLength, true),
    );
  }

  private compareXattrKeys(i: number, j: number): number {
    const dv = this.dv;
    const ri = this.xattrBase + i * this.xattrRec;
    const rj = this.xattrBase + j * this.xattrRec;
    return compareBytes(
      this.buffer,
      this.strBase + dv.getUint32(ri + X.keyOffset, true),
      dv.getUint32(ri + X.keyLength, true),
      this.buffer,
      this.strBase + dv.getUint32(rj + X.keyOffset, true),
      dv.getUint32(rj + X.keyLength, true),
    );
  }

  private direntIno(i: number): number {
    return this.dv.getUint32(this.direntBase + i * this.direntRec + D.ino, true);
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
    return this.blobOffsets[i]!;
  }

  /** Stream offset of block i (i = blockCount gives dataLength). No allocation. */
  blockStreamOffset(i: number): number {
    return this.streamOffsets[i]!;
  }

  /** Uncompressed length of block i. No allocation. */
  blockLength(i: number): number {
    return this.streamOffsets[i + 1]! - this.streamOffsets[i]!;
  }

  /** Stored length of block i. No allocation. */
  blockStoredLength(i: number): number {
    return this.blobOffsets[i + 1]! - this.blobOffsets[i]!;
  }

  /** Codec of block i. No allocation. */
  blockCodec(i: number): Codec {
    return this.dv.getUint8(this.blockBase + i * this.blockRec + B.codec);
  }

  /** The stored SHA-256 of block i, as a view into the TOC (do not modify). */
  blockSha256(i: number): Buffer {
    const r = this.blockBase + i * this.blockRec + B.sha256;
    return this.buffer.subarray(r, r + 32);
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

/** Compares a[ao..ao+al) with b[bo..bo+bl) as unsigned bytes (memcmp, then length). */
function compareBytes(a: Uint8Array, ao: number, al: number, b: Uint8Array, bo: number, bl: number): number {
  const n = al < bl ? al : bl;
  for (let k = 0; k < n; k++) {
    const d = a[ao + k]! - b[bo + k]!;
    if (d !== 0) return d;
  }
  return al - bl;
}

/** Worst-case LZ4 block size for `n` input bytes (LZ4_COMPRESSBOUND). */
export function lz4Bound(n: number): number {
  return n + Math.floor(n / 255) + 16;
}
