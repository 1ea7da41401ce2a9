import { constants as fsc } from 'node:fs';
import type { Toc, InodeStat } from '../blob/toc.js';
import { EntryType } from '../blob/types.js';
import { DfError } from '../errors.js';
import type { FileReader, ReadContext } from '../fetch/types.js';
import { silentLogger, type Logger } from '../log.js';
import { Errno, errnoOf, type FsResult } from './errno.js';
import { RateLimitedLog } from './rate-limited-log.js';
import {
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFREG,
  type Attr,
  type DirEntry,
  type StatFs,
} from './attr.js';

export interface LayerFsOptions {
  toc: Toc;
  reader: FileReader;
  logger?: Logger;
  /**
   * Backstop on one read: after this the read answers EIO and the reader's signal is aborted. The FileReader
   * bounds its own time (its configured fetch timeout); this only guarantees a FUSE request never waits forever.
   * Default 120000 ms.
   */
  readTimeoutMs?: number;
  /** Entries of the path → inode cache used by path-based bindings. Default 65536. */
  pathCacheSize?: number;
  /**
   * Attributes for directories this layer only implies (the tar had no entry for them), taken from the
   * layers below, as an unpacker leaves an existing directory alone (see daemon/inherited-dirs.ts).
   */
  inheritedDirs?: Map<number, InheritedDir>;
  /**
   * Told after every read: its context (reader pid, time blocked on the network) and the result (bytes, or a
   * negative errno). For metrics; must not throw or block.
   */
  onRead?: ReadObserver;
}

export type ReadObserver = (ino: number, ctx: ReadContext, result: number) => void;

/** Owner, mode, mtime and xattrs a directory inherits from a lower layer. */
export interface InheritedDir {
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  xattrs: Map<string, Buffer>;
}

/** The overlayfs xattr marking a directory opaque. */
export const OPAQUE_XATTR = 'trusted.overlay.opaque';
const OPAQUE_VALUE = Buffer.from('y');
const EMPTY = Buffer.alloc(0);
const BLOCK = 4096;
const WRITE_FLAGS = fsc.O_WRONLY | fsc.O_RDWR | fsc.O_TRUNC | fsc.O_APPEND | fsc.O_CREAT;

/** Linux makedev(): the dev_t encoding glibc uses. */
export function makedev(major: number, minor: number): number {
  return (
    (minor & 0xff) +
    (major & 0xfff) * 0x100 +
    Math.floor(minor / 0x100) * 0x10_0000 +
    Math.floor(major / 0x1000) * 0x1_0000_0000_000
  );
}

/**
 * The read-only filesystem of one DFB layer, in terms of its TOC and a FileReader. No kernel binding: a
 * binding (fuse-native, native/, the in-process TestBinding of the tests) translates requests into these calls.
 *
 * Inode numbers are the TOC's (root = 1), so hard links share one. Every method answers a value or a negative
 * errno and never throws: an unexpected exception is logged (rate-limited) and answered with EIO.
 */
export class LayerFs {
  readonly toc: Toc;
  readonly reader: FileReader;
  private readonly log: RateLimitedLog;
  private readonly readTimeoutMs: number;
  private readonly pathCache = new Map<string, number>();
  private readonly pathCacheSize: number;
  private statfsCache: StatFs | undefined;
  private readonly inherited: Map<number, InheritedDir> | undefined;
  private readonly onRead: ReadObserver | undefined;

  constructor(opts: LayerFsOptions) {
    this.onRead = opts.onRead;
    this.inherited = opts.inheritedDirs?.size ? opts.inheritedDirs : undefined;
    this.toc = opts.toc;
    this.reader = opts.reader;
    this.log = new RateLimitedLog(opts.logger ?? silentLogger);
    this.readTimeoutMs = opts.readTimeoutMs ?? 120_000;
    this.pathCacheSize = opts.pathCacheSize ?? 65_536;
  }

  /** Runs a metadata operation: any exception becomes an errno (bad inode: ENOENT; anything else: EIO). */
  private guard<T>(op: string, ino: number, fn: () => FsResult<T>): FsResult<T> {
    try {
      return fn();
    } catch (err) {
      if (err instanceof DfError && err.code === 'NOT_FOUND') return Errno.ENOENT;
      this.log.error({ op, ino, err }, `fuse: ${op} failed`);
      return Errno.EIO;
    }
  }

  /** Logs an exception raised in a binding's glue code; returns EIO. */
  handlerError(op: string, path: string, err: unknown): number {
    this.log.error({ op, path, err }, `fuse: ${op} handler threw`);
    return Errno.EIO;
  }

  // ------------------------------------------------------------------ attributes

  private attrOf(st: InodeStat): Attr {
    const inh = this.inherited?.get(st.ino);
    if (inh)
      st = {
        ...st,
        mode: inh.mode,
        uid: inh.uid,
        gid: inh.gid,
        mtimeSec: inh.mtimeSec,
        mtimeNsec: inh.mtimeNsec,
      };
    let mode: number;
    let rdev = 0;
    switch (st.type) {
      case EntryType.File:
        mode = S_IFREG | st.mode;
        break;
      case EntryType.Dir:
        mode = S_IFDIR | st.mode;
        break;
      case EntryType.Symlink:
        mode = S_IFLNK | st.mode;
        break;
      case EntryType.CharDev:
        mode = S_IFCHR | st.mode;
        rdev = makedev(st.devMajor, st.devMinor);
        break;
      case EntryType.BlockDev:
        mode = S_IFBLK | st.mode;
        rdev = makedev(st.devMajor, st.devMinor);
        break;
      case EntryType.Fifo:
        mode = S_IFIFO | st.mode;
        break;
      case EntryType.Whiteout:
        // what overlayfs takes for a whiteout: a character device 0/0, mode bits 0
        mode = S_IFCHR;
        break;
      default:
        throw DfError.corrupt(`DFB TOC: inode ${st.ino} has unknown type ${st.type as number}`);
    }
    return {
      ino: st.ino,
      mode,
      nlink: st.nlink,
      uid: st.uid,
      gid: st.gid,
      rdev,
      size: st.size,
      blocks: Math.ceil(st.size / 512),
      blksize: BLOCK,
      mtimeSec: st.mtimeSec,
      mtimeNsec: st.mtimeNsec,
    };
  }

  getattr(ino: number): FsResult<Attr> {
    return this.guard('getattr', ino, () => this.attrOf(this.toc.stat(ino)));
  }

  /** Looks a name up in a directory. */
  lookup(parent: number, name: string): FsResult<Attr> {
    return this.guard('lookup', parent, () => {
      if (this.toc.type(parent) !== EntryType.Dir) return Errno.ENOTDIR;
      if (name === '.') return this.attrOf(this.toc.stat(parent));
      if (name === '..') return this.attrOf(this.toc.stat(this.toc.parent(parent)));
      const ino = this.toc.lookupChild(parent, name);
      return ino === undefined ? Errno.ENOENT : this.attrOf(this.toc.stat(ino));
    });
  }

  /**
   * Inode of an absolute path ('/a/b'), for path-based bindings. Lookups are cached (the layer never
   * changes); each miss costs one binary search per component, starting from the longest cached parent.
   */
  resolve(path: string): FsResult<number> {
    if (path === '/' || path === '') return 1;
    const hit = this.pathCache.get(path);
    if (hit !== undefined) return hit;
    return this.guard('resolve', 0, () => {
      const slash = path.lastIndexOf('/');
      const parent = slash <= 0 ? 1 : this.resolve(path.slice(0, slash));
      if (parent < 0) return parent;
      if (this.toc.type(parent) !== EntryType.Dir) return Errno.ENOTDIR;
      const name = path.slice(slash + 1);
      const ino = name === '' ? parent : this.toc.lookupChild(parent, name);
      if (ino === undefined) return Errno.ENOENT;
      if (this.pathCache.size >= this.pathCacheSize) this.pathCache.clear();
      this.pathCache.set(path, ino);
      return ino;
    });
  }

  // ------------------------------------------------------------------ directories

  opendir(ino: number): FsResult<0> {
    return this.guard('opendir', ino, () => (this.toc.type(ino) === EntryType.Dir ? 0 : Errno.ENOTDIR));
  }

  /** Entries of a directory (without '.' and '..'), sorted by name bytes, with their attributes. */
  readdir(ino: number): FsResult<DirEntry[]> {
    return this.guard('readdir', ino, () => {
      if (this.toc.type(ino) !== EntryType.Dir) return Errno.ENOTDIR;
      return this.toc
        .readdir(ino)
        .map(({ name, ino: child }) => ({ name, ino: child, attr: this.attrOf(this.toc.stat(child)) }));
    });
  }

  // ------------------------------------------------------------------ files

  /** Checks an open(2): write access is EROFS, directories EISDIR. Returns 0 (no file handles needed). */
  open(ino: number, flags: number): FsResult<0> {
    return this.guard('open', ino, () => {
      const type = this.toc.type(ino);
      if ((flags & WRITE_FLAGS) !== 0) return Errno.EROFS;
      if (type === EntryType.Dir) return Errno.EISDIR;
      return 0;
    });
  }

  /** A file handle on `ino` was closed: tells the reader (read-ahead of that file stops). */
  release(ino: number): void {
    try {
      this.reader.release?.(ino);
    } catch (err) {
      this.log.error({ op: 'release', ino, err }, 'fuse: release failed');
    }
  }

  /** access(2): W_OK is EROFS; everything else is left to default_permissions. */
  access(ino: number, mode: number): FsResult<0> {
    return this.guard('access', ino, () => {
      this.toc.type(ino);
      return (mode & fsc.W_OK) !== 0 ? Errno.EROFS : 0;
    });
  }

  /**
   * Up to `length` bytes of a regular file from `offset`: empty at or past the end of the file, EIO (or
   * ENOSPC) when the reader fails, EIO after readTimeoutMs at the latest.
   */
  async read(
    ino: number,
    offset: number,
    length: number,
    signal?: AbortSignal,
    ctx?: ReadContext,
  ): Promise<FsResult<Buffer>> {
    if (!this.onRead) return this.readFile(ino, offset, length, signal, ctx);
    const c = ctx ?? { pid: 0, blockedMs: 0 };
    const r = await this.readFile(ino, offset, length, signal, c);
    try {
      this.onRead(ino, c, typeof r === 'number' ? r : r.length);
    } catch (err) {
      this.log.error({ op: 'read', ino, err }, 'fuse: read observer threw');
    }
    return r;
  }

  private async readFile(
    ino: number,
    offset: number,
    length: number,
    signal: AbortSignal | undefined,
    ctx: ReadContext | undefined,
  ): Promise<FsResult<Buffer>> {
    let size: number;
    try {
      const st = this.toc.stat(ino);
      if (st.type === EntryType.Dir) return Errno.EISDIR;
      if (st.type !== EntryType.File) return Errno.EINVAL;
      size = st.size;
    } catch (err) {
      if (err instanceof DfError && err.code === 'NOT_FOUND') return Errno.ENOENT;
      this.log.error({ op: 'read', ino, err }, 'fuse: read failed');
      return Errno.EIO;
    }
    if (!(offset >= 0) || !(length >= 0)) return Errno.EINVAL;
    const n = Math.min(length, size - offset);
    if (n <= 0) return EMPTY;
    const ac = new AbortController();
    const onAbort = () => ac.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const e = DfError.timeout(
          `read of inode ${ino} (${offset}+${n}) did not finish within ${this.readTimeoutMs} ms`,
        );
        ac.abort(e);
        reject(e);
      }, this.readTimeoutMs);
    });
    try {
      const data = await Promise.race([this.reader.read(ino, offset, n, ac.signal, ctx), timeout]);
      return data.length > n ? data.subarray(0, n) : data;
    } catch (err) {
      this.log.error({ op: 'read', ino, offset, length: n, err }, 'fuse: read failed');
      return errnoOf(err);
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
  }

  readlink(ino: number): FsResult<string> {
    return this.guard('readlink', ino, () =>
      this.toc.type(ino) === EntryType.Symlink ? this.toc.readlink(ino) : Errno.EINVAL,
    );
  }

  // ------------------------------------------------------------------ xattrs

  private isOpaque(ino: number): boolean {
    return this.toc.type(ino) === EntryType.Dir && this.toc.stat(ino).opaque;
  }

  /** Value of an xattr; ENODATA when absent. Opaque directories also have trusted.overlay.opaque=y. */
  private xattrsOf(ino: number): Map<string, Buffer> {
    return this.inherited?.get(ino)?.xattrs ?? this.toc.xattrs(ino);
  }

  getxattr(ino: number, name: string): FsResult<Buffer> {
    return this.guard('getxattr', ino, () => {
      const v = this.xattrsOf(ino).get(name);
      if (v !== undefined) return v;
      if (name === OPAQUE_XATTR && this.isOpaque(ino)) return OPAQUE_VALUE;
      return Errno.ENODATA;
    });
  }

  listxattr(ino: number): FsResult<string[]> {
    return this.guard('listxattr', ino, () => {
      const names = [...this.xattrsOf(ino).keys()];
      if (this.isOpaque(ino) && !names.includes(OPAQUE_XATTR)) names.push(OPAQUE_XATTR);
      return names;
    });
  }

  // ------------------------------------------------------------------ filesystem

  statfs(): StatFs {
    if (this.statfsCache) return this.statfsCache;
    let blocks = 0;
    try {
      // hard links share an inode: each inode counts once
      for (let ino = 1; ino <= this.toc.inodeCount; ino++) {
        const st = this.toc.stat(ino);
        blocks += st.type === EntryType.Dir ? 1 : Math.ceil(st.size / BLOCK);
      }
    } catch (err) {
      this.log.error({ op: 'statfs', err }, 'fuse: statfs failed');
    }
    this.statfsCache = {
      bsize: BLOCK,
      frsize: BLOCK,
      blocks,
      bfree: 0,
      bavail: 0,
      files: this.toc.inodeCount,
      ffree: 0,
      favail: 0,
      fsid: 0,
      flag: 1, // ST_RDONLY
      namemax: 255,
    };
    return this.statfsCache;
  }

  /** Answer to every modifying request (write, create, mkdir, setxattr, ...). */
  readOnly(): number {
    return Errno.EROFS;
  }
}
