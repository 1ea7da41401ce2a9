import { isUtf8 } from 'node:buffer';
import { DfError } from '../errors.js';
import { B, D, H, I, MAX_NAME_LENGTH, MAX_PREFETCH_RANGES, PX, TOC_MAGIC, X } from './toc-layout.js';
import { Codec, EntryType, MAX_BLOCK_LENGTH } from './types.js';

/**
 * Decoding-time validation of an encoded TOC (docs/format.md, "Validation"). After these checks pass,
 * every reference in the TOC is in range and the directory tree is a tree, so the accessors of Toc
 * cannot fail or loop.
 */

/** Where the sections of an encoded TOC are (from its header). */
export interface TocSections {
  buffer: Buffer;
  dv: DataView;
  blockCount: number;
  blockRec: number;
  blockBase: number;
  inodeCount: number;
  inodeRec: number;
  inodeBase: number;
  direntCount: number;
  direntRec: number;
  direntBase: number;
  xattrCount: number;
  xattrRec: number;
  xattrBase: number;
  strBase: number;
  stringsLength: number;
  dataLength: number;
  storedDataLength: number;
  /** Prefetch ranges (1.1): count and offset in the string table; 0, 0 when the header has no such fields. */
  prefetchCount: number;
  prefetchOffset: number;
}

/** A range of the data stream a reader fetches first when it opens the layer (format 1.1). */
export interface PrefetchRange {
  offset: number;
  length: number;
}

export const TWO32 = 0x1_0000_0000;
/** Keeps a u64 / i64 within Number.MAX_SAFE_INTEGER. */
const MAX_HI = 0x1f_ffff;

const corrupt = (msg: string) => DfError.corrupt(`DFB TOC: ${msg}`);

/** Reads the header and checks that the sections exactly fill the buffer. */
export function parseSections(buf: Buffer): TocSections {
  if (buf.length < H.SIZE) throw corrupt(`too short (${buf.length} bytes)`);
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const u32 = (o: number) => dv.getUint32(o, true);
  if (u32(H.magic) !== TOC_MAGIC) throw corrupt('bad magic');
  const headerSize = u32(H.headerSize);
  const blockCount = u32(H.blockCount);
  const blockRec = u32(H.blockRecordSize);
  const inodeCount = u32(H.inodeCount);
  const inodeRec = u32(H.inodeRecordSize);
  const direntCount = u32(H.direntCount);
  const direntRec = u32(H.direntRecordSize);
  const xattrCount = u32(H.xattrCount);
  const xattrRec = u32(H.xattrRecordSize);
  const stringsLength = u32(H.stringsLength);
  const dataLength = u64(dv, H.dataLength, 'data length');
  const storedDataLength = u64(dv, H.storedDataLength, 'stored data length');
  if (headerSize < H.SIZE) throw corrupt(`header size ${headerSize} < ${H.SIZE}`);
  if (blockRec < B.SIZE || inodeRec < I.SIZE || direntRec < D.SIZE || xattrRec < X.SIZE) {
    throw corrupt('record size smaller than this version defines');
  }
  const blockBase = headerSize;
  const inodeBase = blockBase + blockCount * blockRec;
  const direntBase = inodeBase + inodeCount * inodeRec;
  const xattrBase = direntBase + direntCount * direntRec;
  const strBase = xattrBase + xattrCount * xattrRec;
  const total = strBase + stringsLength;
  if (total !== buf.length) {
    throw corrupt(`section sizes add up to ${total} bytes but the TOC is ${buf.length} bytes`);
  }
  if (inodeCount < 1) throw corrupt('no root inode');
  const hasPrefetch = headerSize >= PX.END;
  return {
    prefetchCount: hasPrefetch ? u32(PX.count) : 0,
    prefetchOffset: hasPrefetch ? u32(PX.offset) : 0,
    buffer: buf,
    dv,
    blockCount,
    blockRec,
    blockBase,
    inodeCount,
    inodeRec,
    inodeBase,
    direntCount,
    direntRec,
    direntBase,
    xattrCount,
    xattrRec,
    xattrBase,
    strBase,
    stringsLength,
    dataLength,
    storedDataLength,
  };
}

function u64(dv: DataView, off: number, what: string): number {
  const lo = dv.getUint32(off, true);
  const hi = dv.getUint32(off + 4, true);
  if (hi > MAX_HI) throw corrupt(`${what} out of range`);
  return hi * TWO32 + lo;
}

/** Checks the block table and returns the blob and stream prefix sums (n + 1 entries each). */
export function validateBlocks(s: TocSections): { blobOffsets: Float64Array; streamOffsets: Float64Array } {
  const blobOffsets = new Float64Array(s.blockCount + 1);
  const streamOffsets = new Float64Array(s.blockCount + 1);
  const dv = s.dv;
  let blob = 0;
  let stream = 0;
  for (let i = 0; i < s.blockCount; i++) {
    const r = s.blockBase + i * s.blockRec;
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
    blobOffsets[i] = blob;
    streamOffsets[i] = stream;
    blob += stored;
    stream += len;
  }
  blobOffsets[s.blockCount] = blob;
  streamOffsets[s.blockCount] = stream;
  if (blob !== s.storedDataLength) {
    throw corrupt(`block stored lengths add up to ${blob}, header says ${s.storedDataLength}`);
  }
  if (stream !== s.dataLength) {
    throw corrupt(`block lengths add up to ${stream}, header says ${s.dataLength}`);
  }
  return { blobOffsets, streamOffsets };
}

/**
 * Checks the prefetch ranges (docs/format.md §6.1a) and returns them: at most MAX_PREFETCH_RANGES, inside the
 * string table, each non-empty and inside the data stream, sorted by offset, neither overlapping nor touching.
 */
export function validatePrefetch(s: TocSections): readonly PrefetchRange[] {
  const n = s.prefetchCount;
  const at = s.prefetchOffset;
  if (n === 0) {
    if (at !== 0) throw corrupt(`prefetch ranges: count 0 with offset ${at}`);
    return Object.freeze([]);
  }
  if (n > MAX_PREFETCH_RANGES) throw corrupt(`prefetch ranges: ${n} > ${MAX_PREFETCH_RANGES}`);
  if (at > s.stringsLength || n * PX.RANGE > s.stringsLength - at) {
    throw corrupt(
      `prefetch ranges: ${n} ranges at ${at} outside the string table (${s.stringsLength} bytes)`,
    );
  }
  const out: PrefetchRange[] = new Array(n);
  let prevEnd = -1;
  for (let i = 0; i < n; i++) {
    const r = s.strBase + at + i * PX.RANGE;
    const offset = u64(s.dv, r, `prefetch range ${i} offset`);
    const length = u64(s.dv, r + 8, `prefetch range ${i} length`);
    if (length === 0) throw corrupt(`prefetch range ${i}: empty`);
    if (offset + length > s.dataLength) {
      throw corrupt(
        `prefetch range ${i}: ${offset}+${length} past the end of the data stream (${s.dataLength})`,
      );
    }
    if (offset <= prevEnd)
      throw corrupt(`prefetch range ${i}: not after the end of range ${i - 1} (unsorted or overlapping)`);
    prevEnd = offset + length;
    out[i] = Object.freeze({ offset, length });
  }
  return Object.freeze(out);
}

/** Checks inodes, dirents, xattrs and the tree structure (refs, order, parents, reachability, nlink). */
export function validateTree(s: TocSections): void {
  const stringsLength = s.stringsLength;
  const dv = s.dv;
  const n = s.inodeCount;
  const nd = s.direntCount;
  const buf = s.buffer;
  // --- inodes
  let xattrCursor = 0;
  let dirs = 0;
  for (let ino = 1; ino <= n; ino++) {
    const r = s.inodeBase + (ino - 1) * s.inodeRec;
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
    if (xFirst !== xattrCursor || xCount > s.xattrCount - xattrCursor) {
      throw corrupt(`inode ${ino}: xattr range ${xFirst}+${xCount} does not follow the previous inode's`);
    }
    xattrCursor += xCount;
    switch (type) {
      case EntryType.File: {
        if (b > MAX_HI) throw corrupt(`inode ${ino}: data offset out of range`);
        const off = b * TWO32 + a;
        if (off + size > s.dataLength) {
          throw corrupt(
            `inode ${ino}: data ${off}+${size} past the end of the data stream (${s.dataLength})`,
          );
        }
        break;
      }
      case EntryType.Dir:
        dirs++;
        if (size !== 0) throw corrupt(`inode ${ino}: directory with size ${size}`);
        if (a > nd || b > nd - a) throw corrupt(`inode ${ino}: child range ${a}+${b} outside ${nd} dirents`);
        if (parent < 1 || parent > n) throw corrupt(`inode ${ino}: parent ${parent} out of range`);
        if (ino === 1 && parent !== 1) throw corrupt('root directory parent is not itself');
        break;
      case EntryType.Symlink:
        if (a > stringsLength || b > stringsLength - a)
          throw corrupt(`inode ${ino}: symlink target out of range`);
        if (size !== b) throw corrupt(`inode ${ino}: symlink size ${size} != target length ${b}`);
        if (!isUtf8(buf.subarray(s.strBase + a, s.strBase + a + b))) {
          throw corrupt(`inode ${ino}: symlink target is not valid UTF-8`);
        }
        break;
      default:
        if (size !== 0) throw corrupt(`inode ${ino}: type ${type} with size ${size}`);
    }
    if (type !== EntryType.Dir && parent !== 0)
      throw corrupt(`inode ${ino}: non-directory with a parent field`);
  }
  if (xattrCursor !== s.xattrCount) {
    throw corrupt(`inodes claim ${xattrCursor} xattrs, table has ${s.xattrCount}`);
  }
  // --- dirents: refs in range, names well formed
  const refs = new Uint32Array(n + 1);
  for (let i = 0; i < nd; i++) {
    const r = s.direntBase + i * s.direntRec;
    const off = dv.getUint32(r + D.nameOffset, true);
    const len = dv.getUint32(r + D.nameLength, true);
    const ino = dv.getUint32(r + D.ino, true);
    if (len === 0 || len > MAX_NAME_LENGTH || off > stringsLength || len > stringsLength - off) {
      throw corrupt(`dirent ${i}: name reference ${off}+${len} invalid`);
    }
    if (ino < 2 || ino > n) throw corrupt(`dirent ${i}: inode ${ino} out of range`);
    const at = s.strBase + off;
    // one pass over the bytes, no allocation: a TOC's first validation runs before V8 optimizes anything,
    // and a Buffer view plus three native calls per name cost more than the loop
    let ascii = true;
    for (let k = at; k < at + len; k++) {
      const c = buf[k]!;
      if (c === 0x2f || c === 0) throw corrupt(`dirent ${i}: name contains '/' or NUL`);
      if (c >= 0x80) ascii = false;
    }
    if ((len === 1 && buf[at] === 0x2e) || (len === 2 && buf[at] === 0x2e && buf[at + 1] === 0x2e)) {
      throw corrupt(`dirent ${i}: name is '.' or '..'`);
    }
    if (!ascii && !isUtf8(buf.subarray(at, at + len))) throw corrupt(`dirent ${i}: name is not valid UTF-8`);
    refs[ino]!++;
  }
  // --- directory child ranges: disjoint, covering all dirents, sorted strictly, parent links consistent
  const owner = new Uint32Array(nd);
  const subdirs = new Uint32Array(n + 1);
  let owned = 0;
  for (let dir = 1; dir <= n; dir++) {
    const r = s.inodeBase + (dir - 1) * s.inodeRec;
    if (dv.getUint8(r + I.type) !== EntryType.Dir) continue;
    const first = dv.getUint32(r + I.a, true);
    const count = dv.getUint32(r + I.b, true);
    for (let i = first; i < first + count; i++) {
      if (owner[i] !== 0) throw corrupt(`dirent ${i} is claimed by directories ${owner[i]} and ${dir}`);
      owner[i] = dir;
      owned++;
      if (i > first && compareNames(s, i - 1, i) >= 0) {
        throw corrupt(`directory ${dir}: entries ${i - 1} and ${i} are not in strictly ascending name order`);
      }
      const child = direntIno(s, i);
      const cr = s.inodeBase + (child - 1) * s.inodeRec;
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
    const r = s.inodeBase + (dir - 1) * s.inodeRec;
    const first = dv.getUint32(r + I.a, true);
    const count = dv.getUint32(r + I.b, true);
    for (let i = first; i < first + count; i++) {
      const child = direntIno(s, i);
      if ((s.dv.getUint8(s.inodeBase + (child - 1) * s.inodeRec + I.type) as EntryType) === EntryType.Dir)
        stack.push(child);
    }
  }
  if (seen !== dirs) throw corrupt(`${dirs - seen} directories are not reachable from the root`);
  for (let ino = 1; ino <= n; ino++) {
    const r = s.inodeBase + (ino - 1) * s.inodeRec;
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
  for (let i = 0; i < s.xattrCount; i++) {
    const r = s.xattrBase + i * s.xattrRec;
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
    if (!isUtf8(buf.subarray(s.strBase + ko, s.strBase + ko + kl))) {
      throw corrupt(`xattr ${i}: name is not valid UTF-8`);
    }
  }
  for (let ino = 1; ino <= n; ino++) {
    const r = s.inodeBase + (ino - 1) * s.inodeRec;
    const first = dv.getUint32(r + I.xattrFirst, true);
    const count = dv.getUint32(r + I.xattrCount, true);
    for (let i = first + 1; i < first + count; i++) {
      if (compareXattrKeys(s, i - 1, i) >= 0)
        throw corrupt(`inode ${ino}: xattr keys not strictly ascending`);
    }
  }
}

function compareNames(s: TocSections, i: number, j: number): number {
  const dv = s.dv;
  const ri = s.direntBase + i * s.direntRec;
  const rj = s.direntBase + j * s.direntRec;
  return compareBytes(
    s.buffer,
    s.strBase + dv.getUint32(ri + D.nameOffset, true),
    dv.getUint32(ri + D.nameLength, true),
    s.buffer,
    s.strBase + dv.getUint32(rj + D.nameOffset, true),
    dv.getUint32(rj + D.nameLength, true),
  );
}

function compareXattrKeys(s: TocSections, i: number, j: number): number {
  const dv = s.dv;
  const ri = s.xattrBase + i * s.xattrRec;
  const rj = s.xattrBase + j * s.xattrRec;
  return compareBytes(
    s.buffer,
    s.strBase + dv.getUint32(ri + X.keyOffset, true),
    dv.getUint32(ri + X.keyLength, true),
    s.buffer,
    s.strBase + dv.getUint32(rj + X.keyOffset, true),
    dv.getUint32(rj + X.keyLength, true),
  );
}

function direntIno(s: TocSections, i: number): number {
  return s.dv.getUint32(s.direntBase + i * s.direntRec + D.ino, true);
}

/** Compares a[ao..ao+al) with b[bo..bo+bl) as unsigned bytes (memcmp, then length). */
export function compareBytes(
  a: Uint8Array,
  ao: number,
  al: number,
  b: Uint8Array,
  bo: number,
  bl: number,
): number {
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
