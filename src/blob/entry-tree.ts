import { DfError } from '../errors.js';
import { MAX_NAME_LENGTH } from './toc-layout.js';
import { EntryType, InodeFlags, type EntryMeta } from './types.js';

/** One inode of the tree the writer builds; several names may point at one node (hard links). */
export interface TreeNode {
  type: EntryType;
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  flags: number;
  linkTarget?: string;
  devMajor: number;
  devMinor: number;
  xattrs?: Map<string, Buffer>;
  /** Regular files: content length and offset in the data stream (set when the content is written). */
  size: number;
  dataOffset: number;
  children?: Map<string, TreeNode>;
}

const SURROGATE = /[\uD800-\uDFFF]/;

/** Replaces lone surrogates by U+FFFD, as UTF-8 encoding does, so that equal bytes mean equal strings. */
function wellFormed(s: string): string {
  return SURROGATE.test(s) ? Buffer.from(s, 'utf8').toString('utf8') : s;
}

/** Splits a tar path into components: '' and '.' are dropped, '..' is refused. */
function splitPath(path: string): string[] {
  if (typeof path !== 'string') throw DfError.invalidArgument(`DFB writer: path must be a string`);
  // Names are stored as UTF-8; make the string well-formed so that equal bytes mean equal keys.
  const p = wellFormed(path);
  const out: string[] = [];
  for (const c of p.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..')
      throw DfError.invalidArgument(`DFB writer: path ${JSON.stringify(path)} has a '..' component`);
    if (c.includes('\0'))
      throw DfError.invalidArgument(`DFB writer: path ${JSON.stringify(path)} contains NUL`);
    if (Buffer.byteLength(c) > MAX_NAME_LENGTH) {
      throw DfError.invalidArgument(
        `DFB writer: name longer than ${MAX_NAME_LENGTH} bytes in ${JSON.stringify(path)}`,
      );
    }
    out.push(c);
  }
  return out;
}

function checkU32(v: number | undefined, what: string, path: string): number {
  const n = v ?? 0;
  if (!Number.isInteger(n) || n < 0 || n > 0xffff_ffff) {
    throw DfError.invalidArgument(`DFB writer: ${what} ${n} of ${JSON.stringify(path)} is not a u32`);
  }
  return n;
}

export function nodeFromMeta(meta: EntryMeta, type: EntryType = meta.type): TreeNode {
  const p = meta.path;
  if (!Number.isSafeInteger(meta.mtimeSec)) throw DfError.invalidArgument(`DFB writer: bad mtime of ${p}`);
  const nsec = checkU32(meta.mtimeNsec, 'mtime nanoseconds', p);
  if (nsec >= 1e9) throw DfError.invalidArgument(`DFB writer: mtime nanoseconds ${nsec} >= 1e9 for ${p}`);
  const node: TreeNode = {
    type,
    mode: checkU32(meta.mode, 'mode', p) & 0o7777,
    uid: checkU32(meta.uid, 'uid', p),
    gid: checkU32(meta.gid, 'gid', p),
    mtimeSec: meta.mtimeSec,
    mtimeNsec: nsec,
    flags: 0,
    devMajor: 0,
    devMinor: 0,
    size: 0,
    dataOffset: 0,
  };
  if (meta.xattrs && meta.xattrs.size) {
    for (const k of meta.xattrs.keys()) {
      if (k === '') throw DfError.invalidArgument(`DFB writer: empty xattr name on ${p}`);
    }
    // Shared, not copied: a tar's global PAX xattrs are one map for every entry (nothing mutates it).
    node.xattrs = meta.xattrs;
  }
  switch (type) {
    case EntryType.Dir:
      node.children = new Map();
      break;
    case EntryType.Symlink:
      if (typeof meta.linkTarget !== 'string')
        throw DfError.invalidArgument(`DFB writer: symlink ${p} has no target`);
      node.linkTarget = wellFormed(meta.linkTarget);
      node.size = Buffer.byteLength(node.linkTarget);
      break;
    case EntryType.CharDev:
    case EntryType.BlockDev:
      node.devMajor = checkU32(meta.devMajor, 'device major', p);
      node.devMinor = checkU32(meta.devMinor, 'device minor', p);
      break;
    case EntryType.File:
    case EntryType.Fifo:
    case EntryType.Whiteout:
      break;
    default:
      throw DfError.invalidArgument(`DFB writer: unknown entry type ${String(type)} for ${p}`);
  }
  return node;
}

/**
 * The file tree under construction, with tar semantics: later entries replace earlier ones
 * (a directory replacing a directory keeps its children), missing parents are created implicitly.
 */
export class EntryTree {
  readonly root: TreeNode = {
    type: EntryType.Dir,
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtimeSec: 0,
    mtimeNsec: 0,
    flags: InodeFlags.implicit,
    devMajor: 0,
    devMinor: 0,
    size: 0,
    dataOffset: 0,
    children: new Map(),
  };

  /** Parent directory node of `comps`, creating implicit directories (replacing non-directories) on the way. */
  private parentOf(comps: string[]): TreeNode {
    let dir = this.root;
    for (let i = 0; i < comps.length - 1; i++) {
      const name = comps[i]!;
      let next = dir.children!.get(name);
      if (!next || next.type !== EntryType.Dir) {
        next = implicitDir();
        dir.children!.set(name, next);
      }
      dir = next;
    }
    return dir;
  }

  /** Adds or replaces the entry at `path`. Returns the node now stored there. */
  put(path: string, node: TreeNode): TreeNode {
    const comps = splitPath(path);
    if (comps.length === 0) {
      if (node.type !== EntryType.Dir) {
        throw DfError.invalidArgument(`DFB writer: the root can only be a directory (got type ${node.type})`);
      }
      replaceDirAttrs(this.root, node);
      return this.root;
    }
    const name = comps[comps.length - 1]!;
    // A whiteout below a non-directory (umoci writes `link/.wh.x` after replacing dir `link` by a symlink)
    // hides nothing: unpackers ignore it, and so do we rather than turning the symlink into a directory.
    if (node.type === EntryType.Whiteout && this.underNonDir(comps)) return node;
    const parent = this.parentOf(comps);
    const key = name;
    const old = parent.children!.get(key);
    if (old && old.type === EntryType.Dir && node.type === EntryType.Dir) {
      replaceDirAttrs(old, node);
      return old;
    }
    parent.children!.set(key, node);
    return node;
  }

  get(path: string): TreeNode | undefined {
    let node: TreeNode | undefined = this.root;
    for (const c of splitPath(path)) {
      node = node.children?.get(c);
      if (!node) return undefined;
    }
    return node;
  }

  /** Whether an existing ancestor of `comps` (or, for opaque markers, the entry itself) is not a directory. */
  private underNonDir(comps: string[], self = false): boolean {
    let node: TreeNode | undefined = this.root;
    const n = self ? comps.length : comps.length - 1;
    for (let i = 0; i < n; i++) {
      node = node.children?.get(comps[i]!);
      if (!node) return false;
      if (node.type !== EntryType.Dir) return true;
    }
    return false;
  }

  markOpaque(dirPath: string): void {
    const comps = splitPath(dirPath);
    if (this.underNonDir(comps, true)) return;
    let dir = this.root;
    if (comps.length) {
      const parent = this.parentOf(comps);
      const name = comps[comps.length - 1]!;
      let d = parent.children!.get(name);
      if (!d || d.type !== EntryType.Dir) {
        d = implicitDir();
        parent.children!.set(name, d);
      }
      dir = d;
    }
    dir.flags |= InodeFlags.opaque;
  }

  link(path: string, target: TreeNode): void {
    const comps = splitPath(path);
    if (comps.length === 0) throw DfError.invalidArgument('DFB writer: cannot hard-link over the root');
    this.parentOf(comps).children!.set(comps[comps.length - 1]!, target);
  }
}

function implicitDir(): TreeNode {
  return {
    type: EntryType.Dir,
    mode: 0o755,
    uid: 0,
    gid: 0,
    mtimeSec: 0,
    mtimeNsec: 0,
    flags: InodeFlags.implicit,
    devMajor: 0,
    devMinor: 0,
    size: 0,
    dataOffset: 0,
    children: new Map(),
  };
}

/** A directory entry for an existing directory: new attributes, same children, opaque flag kept, no longer implicit. */
function replaceDirAttrs(dir: TreeNode, from: TreeNode): void {
  dir.mode = from.mode;
  dir.uid = from.uid;
  dir.gid = from.gid;
  dir.mtimeSec = from.mtimeSec;
  dir.mtimeNsec = from.mtimeNsec;
  dir.flags = (dir.flags & ~InodeFlags.implicit) | (from.flags & InodeFlags.opaque);
  if (from.xattrs) dir.xattrs = from.xattrs;
  else delete dir.xattrs;
}
