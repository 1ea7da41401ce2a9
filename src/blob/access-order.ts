import { createHash, randomBytes } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { DfError } from '../errors.js';
import type { BlockSink } from './block-sink.js';
import type { EntryTree, TreeNode } from './entry-tree.js';
import type { PrefetchEntry } from './prefetch-list.js';
import { MAX_PREFETCH_RANGES } from './toc-layout.js';
import type { PrefetchRange } from './toc-validate.js';
import { EntryType } from './types.js';

/** Chunk size when copying a spooled content into the block sink. */
const COPY_CHUNK = 1024 * 1024;
/** Contents are gathered into writes of about this size before they go to the spool file. */
const SPOOL_BUFFER = 1024 * 1024;

interface Content {
  /** Where the content is in the spool file. */
  spoolOffset: number;
  size: number;
  /** Where it went in the data stream; -1 until placed. */
  streamOffset: number;
  nodes: TreeNode[];
}

/**
 * The access-ordered layout of a layer (dfconvert --prefetch-list): the data stream starts with the listed
 * files, contiguous and in first-access order, and the rest follows in tar order.
 *
 * The writer sees the tar once, and a listed file may come anywhere in it (or not at all, or be replaced by
 * a later entry), so nothing can go to the block sink before the whole tar is read: every content is
 * spooled (deduplicated by SHA-256) to one temp file while the tar is read, and place() then copies the
 * contents into the sink in the final order. Memory holds one small record per distinct content; the disk
 * holds the layer's distinct file data once more for the duration of the conversion. The order depends only
 * on the tar and the list, so the blob is byte-identical for any worker count.
 */
export class AccessOrderLayout {
  private readonly spoolPath: string;
  private fh: FileHandle | undefined;
  private spoolEnd = 0;
  private readonly contents: Content[] = [];
  private readonly byDigest = new Map<string, Content>();
  private readonly byNode = new Map<TreeNode, Content>();
  deduped = 0;

  constructor(
    tmpDir: string,
    private readonly entries: readonly PrefetchEntry[],
    private readonly checkSignal: () => void,
  ) {
    this.spoolPath = join(tmpDir, `dfb-order-${process.pid}-${randomBytes(6).toString('hex')}`);
  }

  /** Spools one file's content (exactly node.size bytes) and records which content the node has. */
  async add(
    node: TreeNode,
    content: AsyncIterable<Uint8Array>,
    onBytes: (n: number) => void,
  ): Promise<number> {
    this.fh ??= await open(this.spoolPath, 'w+');
    const hash = createHash('sha256');
    const start = this.spoolEnd;
    let pos = start;
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    const flush = async () => {
      if (!pendingBytes) return;
      const b = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
      pending = [];
      pendingBytes = 0;
      let off = 0;
      while (off < b.length) {
        const { bytesWritten } = await this.fh!.write(b, off, b.length - off, pos);
        off += bytesWritten;
        pos += bytesWritten;
      }
    };
    let got = 0;
    for await (const c of content) {
      this.checkSignal();
      got += c.length;
      if (got > node.size) break;
      const b = Buffer.isBuffer(c) ? c : Buffer.from(c.buffer, c.byteOffset, c.byteLength);
      hash.update(b);
      // a copy: the caller's chunk may be reused once the next one is read (readLayer, large entries)
      pending.push(Buffer.from(b));
      pendingBytes += b.length;
      onBytes(b.length);
      if (pendingBytes >= SPOOL_BUFFER) await flush();
    }
    await flush();
    if (got !== node.size) return got;
    if (node.size === 0) return got;
    const digest = hash.digest('base64');
    let c = this.byDigest.get(digest);
    if (c) {
      this.deduped++;
    } else {
      c = { spoolOffset: start, size: node.size, streamOffset: -1, nodes: [] };
      this.byDigest.set(digest, c);
      this.contents.push(c);
      this.spoolEnd = pos; // a duplicate's bytes are overwritten by the next content
    }
    c.nodes.push(node);
    this.byNode.set(node, c);
    return got;
  }

  /**
   * Copies every content into the sink — the listed ones first, in list order, then the rest in tar order —,
   * sets the nodes' data offsets and returns the prefetch ranges (stream coordinates, merged).
   */
  async place(tree: EntryTree, sink: BlockSink, blockSize: number): Promise<PrefetchRange[]> {
    const ranges: Array<[number, number]> = [];
    for (const e of this.entries) {
      const node = resolveInTree(tree.root, e.path);
      if (!node || node.type !== EntryType.File || node.size === 0) continue; // absent, whiteout, dir, empty
      const c = this.byNode.get(node);
      if (!c) continue;
      if (c.streamOffset < 0) await this.copy(c, sink);
      const pairs = e.ranges ?? [[0, node.size] as const];
      for (const [o, l] of pairs) {
        const end = Math.min(o + l, node.size);
        if (end > o) ranges.push([c.streamOffset + o, c.streamOffset + end]);
      }
    }
    for (const c of this.contents) if (c.streamOffset < 0) await this.copy(c, sink);
    for (const c of this.contents) for (const n of c.nodes) n.dataOffset = c.streamOffset;
    return mergeRanges(ranges, blockSize);
  }

  private async copy(c: Content, sink: BlockSink): Promise<void> {
    c.streamOffset = sink.dataLength;
    let pos = 0;
    while (pos < c.size) {
      this.checkSignal();
      const n = Math.min(COPY_CHUNK, c.size - pos);
      const buf = Buffer.allocUnsafe(n);
      const { bytesRead } = await this.fh!.read(buf, 0, n, c.spoolOffset + pos);
      if (bytesRead <= 0) throw DfError.internal(`DFB writer: spool file ${this.spoolPath} shrank`);
      await sink.append(bytesRead === n ? buf : buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  }

  /** Closes and removes the spool file (idempotent). */
  async dispose(): Promise<void> {
    const fh = this.fh;
    this.fh = undefined;
    await fh?.close().catch(() => undefined);
    await unlink(this.spoolPath).catch(() => undefined);
  }
}

/** Symlinks followed while resolving one list path (as the kernel's limit). */
const MAX_SYMLINKS = 40;

/**
 * The node an absolute list path names in one layer's tree, following the symlinks the layer holds (a merged-usr
 * `/lib/…` reaches `usr/lib/…` when the layer has the `lib` link); undefined when the path leaves the layer's
 * tree. Never throws: a list path is a hint.
 */
export function resolveInTree(root: TreeNode, path: string): TreeNode | undefined {
  const todo = Buffer.from(path, 'utf8').toString('utf8').split('/').reverse();
  const dirs: TreeNode[] = [root]; // the directories of the path resolved so far, for '..'
  let cur = root;
  let hops = 0;
  while (todo.length) {
    const c = todo.pop()!;
    if (c === '' || c === '.') continue;
    if (cur.type !== EntryType.Dir) return undefined;
    if (c === '..') {
      if (dirs.length > 1) dirs.pop();
      cur = dirs[dirs.length - 1]!;
      continue;
    }
    const node = cur.children?.get(c);
    if (!node) return undefined;
    if (node.type === EntryType.Symlink) {
      if (++hops > MAX_SYMLINKS) return undefined;
      const target = node.linkTarget ?? '';
      if (target.startsWith('/')) {
        dirs.length = 1;
        cur = root;
      }
      for (const t of target.split('/').reverse()) todo.push(t);
      continue;
    }
    if (node.type === EntryType.Dir) dirs.push(node);
    cur = node;
  }
  return cur;
}

/**
 * Sorts [start, end) ranges and merges those that overlap or touch; while more than MAX_PREFETCH_RANGES are
 * left, also merges across gaps, doubling the largest gap bridged (starting at one block): a reader fetches
 * whole blocks, so a gap below a block costs at most one block.
 */
export function mergeRanges(ranges: Array<[number, number]>, blockSize: number): PrefetchRange[] {
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let gap = 0;
  for (;;) {
    const out: PrefetchRange[] = [];
    let cur: [number, number] | undefined;
    for (const r of ranges) {
      if (cur && r[0] <= cur[1] + gap) cur[1] = Math.max(cur[1], r[1]);
      else {
        if (cur) out.push({ offset: cur[0], length: cur[1] - cur[0] });
        cur = [r[0], r[1]];
      }
    }
    if (cur) out.push({ offset: cur[0], length: cur[1] - cur[0] });
    if (out.length <= MAX_PREFETCH_RANGES) return out;
    gap = gap ? gap * 2 : blockSize;
  }
}
