import { DfError } from '../errors.js';
import type { TreeNode } from './entry-tree.js';
import { B, D, H, I, MAX_PREFETCH_RANGES, PX, TOC_MAGIC, X } from './toc-layout.js';
import type { PrefetchRange } from './toc-validate.js';
import { EntryType } from './types.js';

export interface TocInput {
  root: TreeNode;
  /** Block records, B.SIZE bytes each, in block order (the writer appends them as blocks are written). */
  blockRecords: Buffer;
  blockCount: number;
  dataLength: number;
  storedDataLength: number;
  /**
   * Stream ranges to prefetch (sorted, disjoint, not touching, inside the stream). When non-empty the TOC
   * gets the 1.1 header (PX); without them the header is the 1.0 one and the TOC is byte-identical to 1.0's.
   */
  prefetchRanges?: readonly PrefetchRange[];
}

export interface EncodedToc {
  toc: Buffer;
  inodes: number;
  dirents: number;
  files: number;
}

/** Append-only byte heap with deduplication of repeated strings (names, targets, keys). */
class StringHeap {
  private chunks: Buffer[] = [];
  private length = 0;
  private readonly seen = new Map<string, number>();

  add(bytes: Buffer, dedupeKey?: string): number {
    if (dedupeKey !== undefined) {
      const at = this.seen.get(dedupeKey);
      if (at !== undefined) return at;
    }
    const off = this.length;
    if (off + bytes.length > 0xffff_ffff)
      throw DfError.unsupported('DFB TOC: string table larger than 4 GiB');
    this.chunks.push(bytes);
    this.length += bytes.length;
    if (dedupeKey !== undefined) this.seen.set(dedupeKey, off);
    return off;
  }

  get size(): number {
    return this.length;
  }

  copyTo(dst: Buffer, at: number): void {
    for (const c of this.chunks) {
      c.copy(dst, at);
      at += c.length;
    }
  }
}

type Child = { name: Buffer; node: TreeNode };

function sortedChildren(dir: TreeNode): Child[] {
  const out: Child[] = [];
  for (const [name, node] of dir.children!) out.push({ name: Buffer.from(name, 'utf8'), node });
  out.sort((a, b) => Buffer.compare(a.name, b.name));
  return out;
}

/**
 * Encodes the tree into the binary TOC (uncompressed). Inodes are numbered in depth-first order with
 * sorted children (root = 1); a node reached by several names (hard link) gets the number of its first name.
 */
export function encodeToc(input: TocInput): EncodedToc {
  const { root } = input;
  const inodes: TreeNode[] = [root];
  const inoOf = new Map<TreeNode, number>([[root, 1]]);
  const children = new Map<TreeNode, Child[]>();
  const parentOf = new Map<TreeNode, number>([[root, 1]]);
  const nlink = new Map<TreeNode, number>();
  let dirents = 0;

  // Depth-first numbering; an explicit stack keeps deep trees off the call stack.
  const stack: Array<{ dir: TreeNode; list: Child[]; i: number }> = [];
  const enter = (dir: TreeNode) => {
    const list = sortedChildren(dir);
    children.set(dir, list);
    stack.push({ dir, list, i: 0 });
  };
  enter(root);
  while (stack.length) {
    const top = stack[stack.length - 1]!;
    if (top.i >= top.list.length) {
      stack.pop();
      continue;
    }
    const { node } = top.list[top.i++]!;
    dirents++;
    nlink.set(node, (nlink.get(node) ?? 0) + 1);
    if (inoOf.has(node)) {
      if (node.type === EntryType.Dir) throw DfError.internal('DFB TOC: a directory has two names');
      continue;
    }
    inodes.push(node);
    inoOf.set(node, inodes.length);
    if (node.type === EntryType.Dir) {
      parentOf.set(node, inoOf.get(top.dir)!);
      enter(node);
    }
  }
  if (inodes.length > 0xffff_ffff || dirents > 0xffff_ffff)
    throw DfError.unsupported('DFB TOC: too many entries');

  const heap = new StringHeap();
  const direntBuf = Buffer.alloc(dirents * D.SIZE);
  const inodeBuf = Buffer.alloc(inodes.length * I.SIZE);
  const xattrRecs: Buffer[] = [];
  let direntCursor = 0;
  let xattrCursor = 0;
  let files = 0;

  for (let k = 0; k < inodes.length; k++) {
    const node = inodes[k]!;
    const r = k * I.SIZE;
    inodeBuf.writeUInt8(node.type, r + I.type);
    inodeBuf.writeUInt8(node.flags & 0xff, r + I.flags);
    inodeBuf.writeUInt32LE(node.mode & 0o7777, r + I.mode);
    inodeBuf.writeUInt32LE(node.uid, r + I.uid);
    inodeBuf.writeUInt32LE(node.gid, r + I.gid);
    writeI64(inodeBuf, node.mtimeSec, r + I.mtimeSec);
    inodeBuf.writeUInt32LE(node.mtimeNsec, r + I.mtimeNsec);
    switch (node.type) {
      case EntryType.File:
        files++;
        writeU64(inodeBuf, node.size, r + I.size);
        writeU64(inodeBuf, node.dataOffset, r + I.a);
        inodeBuf.writeUInt32LE(nlink.get(node)!, r + I.nlink);
        break;
      case EntryType.Dir: {
        const list = children.get(node)!;
        let subdirs = 0;
        inodeBuf.writeUInt32LE(direntCursor, r + I.a);
        inodeBuf.writeUInt32LE(list.length, r + I.b);
        for (const c of list) {
          const d = direntCursor++ * D.SIZE;
          direntBuf.writeUInt32LE(heap.add(c.name, 'n' + c.name.toString('latin1')), d + D.nameOffset);
          direntBuf.writeUInt32LE(c.name.length, d + D.nameLength);
          direntBuf.writeUInt32LE(inoOf.get(c.node)!, d + D.ino);
          if (c.node.type === EntryType.Dir) subdirs++;
        }
        inodeBuf.writeUInt32LE(2 + subdirs, r + I.nlink);
        inodeBuf.writeUInt32LE(parentOf.get(node)!, r + I.parent);
        break;
      }
      case EntryType.Symlink: {
        const target = Buffer.from(node.linkTarget ?? '', 'utf8');
        writeU64(inodeBuf, target.length, r + I.size);
        inodeBuf.writeUInt32LE(heap.add(target, 't' + node.linkTarget), r + I.a);
        inodeBuf.writeUInt32LE(target.length, r + I.b);
        inodeBuf.writeUInt32LE(nlink.get(node)!, r + I.nlink);
        break;
      }
      case EntryType.CharDev:
      case EntryType.BlockDev:
        inodeBuf.writeUInt32LE(node.devMajor, r + I.a);
        inodeBuf.writeUInt32LE(node.devMinor, r + I.b);
        inodeBuf.writeUInt32LE(nlink.get(node)!, r + I.nlink);
        break;
      default:
        inodeBuf.writeUInt32LE(nlink.get(node)!, r + I.nlink);
    }
    // xattrs, sorted by key bytes, later duplicates (after UTF-8 encoding) win
    let xcount = 0;
    if (node.xattrs && node.xattrs.size) {
      const byKey = new Map<string, { key: Buffer; value: Buffer }>();
      for (const [k, v] of node.xattrs) {
        const key = Buffer.from(k, 'utf8');
        byKey.set(key.toString('latin1'), { key, value: Buffer.from(v) });
      }
      const list = [...byKey.values()].sort((a, b) => Buffer.compare(a.key, b.key));
      for (const { key, value } of list) {
        const x = Buffer.alloc(X.SIZE);
        x.writeUInt32LE(heap.add(key, 'k' + key.toString('latin1')), X.keyOffset);
        x.writeUInt32LE(key.length, X.keyLength);
        x.writeUInt32LE(heap.add(value), X.valueOffset);
        x.writeUInt32LE(value.length, X.valueLength);
        xattrRecs.push(x);
      }
      xcount = list.length;
    }
    inodeBuf.writeUInt32LE(xattrCursor, r + I.xattrFirst);
    inodeBuf.writeUInt32LE(xcount, r + I.xattrCount);
    xattrCursor += xcount;
  }

  const ranges = input.prefetchRanges ?? [];
  if (ranges.length > MAX_PREFETCH_RANGES) throw DfError.internal('DFB TOC: too many prefetch ranges');
  let rangesAt = 0;
  if (ranges.length) {
    const packed = Buffer.alloc(ranges.length * PX.RANGE);
    ranges.forEach((r, i) => {
      writeU64(packed, r.offset, i * PX.RANGE);
      writeU64(packed, r.length, i * PX.RANGE + 8);
    });
    rangesAt = heap.add(packed);
  }
  const headerSize = ranges.length ? PX.SIZE : H.SIZE;
  const total =
    headerSize +
    input.blockRecords.length +
    inodeBuf.length +
    direntBuf.length +
    xattrCursor * X.SIZE +
    heap.size;
  if (input.blockRecords.length !== input.blockCount * B.SIZE)
    throw DfError.internal('DFB TOC: block table size');
  const out = Buffer.alloc(total);
  out.writeUInt32LE(TOC_MAGIC, H.magic);
  out.writeUInt32LE(headerSize, H.headerSize);
  out.writeUInt32LE(input.blockCount, H.blockCount);
  out.writeUInt32LE(B.SIZE, H.blockRecordSize);
  out.writeUInt32LE(inodes.length, H.inodeCount);
  out.writeUInt32LE(I.SIZE, H.inodeRecordSize);
  out.writeUInt32LE(dirents, H.direntCount);
  out.writeUInt32LE(D.SIZE, H.direntRecordSize);
  out.writeUInt32LE(xattrCursor, H.xattrCount);
  out.writeUInt32LE(X.SIZE, H.xattrRecordSize);
  out.writeUInt32LE(heap.size, H.stringsLength);
  out.writeBigUInt64LE(BigInt(input.dataLength), H.dataLength);
  out.writeBigUInt64LE(BigInt(input.storedDataLength), H.storedDataLength);
  if (ranges.length) {
    out.writeUInt32LE(rangesAt, PX.offset);
    out.writeUInt32LE(ranges.length, PX.count);
  }
  let at = headerSize;
  at += input.blockRecords.copy(out, at);
  at += inodeBuf.copy(out, at);
  at += direntBuf.copy(out, at);
  for (const x of xattrRecs) at += x.copy(out, at);
  heap.copyTo(out, at);
  return { toc: out, inodes: inodes.length, dirents, files };
}

const TWO32 = 0x1_0000_0000;

function writeU64(b: Buffer, v: number, at: number): void {
  b.writeUInt32LE((v % TWO32) >>> 0, at);
  b.writeUInt32LE(Math.floor(v / TWO32) >>> 0, at + 4);
}

function writeI64(b: Buffer, v: number, at: number): void {
  const hi = Math.floor(v / TWO32);
  b.writeUInt32LE((v - hi * TWO32) >>> 0, at);
  b.writeInt32LE(hi, at + 4);
}
