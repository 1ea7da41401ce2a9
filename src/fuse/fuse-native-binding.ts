import { mkdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { Errno } from './errno.js';
import type { LayerFs } from './layer-fs.js';
import { isFuseType, lazyUnmount, probeMount, readMountInfo, trackMount, untrackMount } from './mounts.js';
import { PathOps } from './path-ops.js';
import type { Attr } from './attr.js';
import type { FuseBinding, FuseMount, MountOptions } from './types.js';

const require = createRequire(import.meta.url);

type Cb = (...args: any[]) => void;

interface FuseInstance {
  mnt: string;
  _thread: Buffer | null;
  mount(cb: (err: Error | null) => void): void;
  unmount(cb: (err: Error | null) => void): void;
}

type FuseCtor = new (mnt: string, ops: Record<string, Cb>, opts: Record<string, unknown>) => FuseInstance;

/** Options beyond what fuse-native exposes: see fuseOptionString. */
interface DfFuseOpts {
  fsname: string;
  cacheTimeoutSec: number;
  allowOther: boolean;
}

let DfFuse: FuseCtor | undefined;

/**
 * fuse-native's Fuse with our mount options and our unmount. Loaded lazily so that importing src/fuse on a
 * machine without the addon (or in unit tests) costs nothing.
 */
function fuseClass(): FuseCtor {
  if (DfFuse) return DfFuse;
  const Fuse = require('fuse-native') as FuseCtor & { prototype: Record<string, unknown> };
  const pkgDir = dirname(require.resolve('fuse-native/package.json'));
  const native = createRequire(require.resolve('fuse-native'))('node-gyp-build')(pkgDir) as {
    fuse_native_unmount(mnt: string, thread: Buffer | null): void;
  };
  class Sub extends (Fuse as unknown as new (...a: unknown[]) => Record<string, any>) {
    /** fuse-native cannot pass use_ino (without it libfuse 2 ignores st_ino) nor ro/negative_timeout. */
    _fuseOptions(): string {
      return fuseOptionString(this.opts.df as DfFuseOpts);
    }

    /** Unmount without fuse-native's `fusermount -uz` (absent or fuse3's on many hosts), then free the thread. */
    _close(cb: (err: Error | null) => void): void {
      lazyUnmount(this.mnt as string).then(
        () => {
          try {
            native.fuse_native_unmount(this.mnt as string, this._thread as Buffer);
          } catch (err) {
            cb(err as Error);
            return;
          }
          cb(null);
        },
        (err: Error) => cb(err),
      );
    }
  }
  DfFuse = Sub as unknown as FuseCtor;
  return DfFuse;
}

/** The `-o` argument given to libfuse 2 (fuse_mount + fuse_new). */
export function fuseOptionString(o: DfFuseOpts): string {
  const t = o.cacheTimeoutSec;
  const opts = [
    'ro',
    // st_ino from getattr/readdir (TOC inode numbers; hard links share one); libfuse 2 ignores it otherwise
    'use_ino',
    'readdir_ino',
    // layers are immutable: cache pages across opens, entries and attributes (and misses) for a long time
    'kernel_cache',
    `entry_timeout=${t}`,
    `attr_timeout=${t}`,
    `negative_timeout=${t}`,
    'default_permissions',
    `fsname=${o.fsname.replace(/[,\\]/g, '_')}`,
    'subtype=dfb',
    'max_read=131072',
  ];
  if (o.allowOther) opts.push('allow_other');
  return '-o' + opts.join(',');
}

/** fuse-native's stat object: times in milliseconds (its wire format keeps no more). */
function statOf(a: Attr): Record<string, number> {
  const ms = Math.max(0, a.mtimeSec * 1000 + Math.floor(a.mtimeNsec / 1e6));
  return {
    mode: a.mode,
    uid: a.uid,
    gid: a.gid,
    size: a.size,
    dev: 0,
    nlink: a.nlink,
    ino: a.ino,
    rdev: a.rdev,
    blksize: a.blksize,
    blocks: a.blocks,
    atime: ms,
    mtime: ms,
    ctime: ms,
  };
}

/** The libfuse 2 operations, in fuse-native's callback style, answered by PathOps. */
function makeOps(p: PathOps): Record<string, Cb> {
  const fs = p.fs;
  /** Runs a handler; a synchronous exception answers EIO (PathOps already turns its own failures into errnos). */
  const guard =
    (op: string, fn: (...a: any[]) => void) =>
    (...args: any[]) => {
      const cb = args[args.length - 1] as Cb;
      try {
        fn(...args);
      } catch (err) {
        cb(fs.handlerError(op, String(args[0]), err));
      }
    };
  const rofs = (op: string) => guard(op, (...a: any[]) => (a[a.length - 1] as Cb)(Errno.EROFS));
  return {
    init: guard('init', (cb: Cb) => cb(0)),
    statfs: guard('statfs', (_path: string, cb: Cb) => {
      const r = p.statfs();
      if (typeof r === 'number') cb(r);
      else cb(0, r);
    }),
    getattr: guard('getattr', (path: string, cb: Cb) => {
      const r = p.getattr(path);
      if (typeof r === 'number') cb(r);
      else cb(0, statOf(r));
    }),
    fgetattr: guard('fgetattr', (path: string, _fd: number, cb: Cb) => {
      const r = p.getattr(path);
      if (typeof r === 'number') cb(r);
      else cb(0, statOf(r));
    }),
    access: guard('access', (path: string, mode: number, cb: Cb) => cb(p.access(path, mode))),
    opendir: guard('opendir', (path: string, _flags: number, cb: Cb) => cb(p.opendir(path), 0)),
    releasedir: guard('releasedir', (_path: string, _fd: number, cb: Cb) => cb(0)),
    readdir: guard('readdir', (path: string, cb: Cb) => {
      const r = p.readdir(path);
      if (typeof r === 'number') return cb(r);
      cb(
        0,
        r.map((e) => e.name),
        r.map((e) => statOf(e.attr)),
      );
    }),
    open: guard('open', (path: string, flags: number, cb: Cb) => cb(p.open(path, flags), 0)),
    release: guard('release', (_path: string, _fd: number, cb: Cb) => cb(0)),
    read: guard('read', (path: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Cb) => {
      p.read(path, pos, len).then(
        (r) => {
          if (typeof r === 'number') return cb(r);
          cb(r.copy(buf, 0, 0, Math.min(r.length, len)));
        },
        (err: unknown) => cb(fs.handlerError('read', path, err)),
      );
    }),
    readlink: guard('readlink', (path: string, cb: Cb) => {
      const r = p.readlink(path);
      if (typeof r === 'number') cb(r);
      else cb(0, r);
    }),
    // getxattr/listxattr are answered by the overrides below (fuse-native's own ones overflow small buffers);
    // these entries only declare the operations as implemented.
    getxattr: guard('getxattr', (_p: string, _n: string, _pos: number, cb: Cb) => cb(Errno.ENODATA)),
    listxattr: guard('listxattr', (_p: string, cb: Cb) => cb(0, [])),
    flush: guard('flush', (_path: string, _fd: number, cb: Cb) => cb(0)),
    fsync: guard('fsync', (_path: string, _ds: number, _fd: number, cb: Cb) => cb(0)),
    write: rofs('write'),
    create: rofs('create'),
    truncate: rofs('truncate'),
    ftruncate: rofs('ftruncate'),
    utimens: rofs('utimens'),
    chown: rofs('chown'),
    chmod: rofs('chmod'),
    mknod: rofs('mknod'),
    setxattr: rofs('setxattr'),
    removexattr: rofs('removexattr'),
    unlink: rofs('unlink'),
    rename: rofs('rename'),
    link: rofs('link'),
    symlink: rofs('symlink'),
    mkdir: rofs('mkdir'),
    rmdir: rofs('rmdir'),
  };
}

/** xattr handlers with ERANGE, installed on each Fuse instance (they see the kernel's buffer size). */
function installXattrHandlers(fuse: Record<string, any>, p: PathOps): void {
  fuse._op_getxattr = (signal: Cb, path: string, name: string, valueBuf: Buffer) => {
    let res: number;
    try {
      const r = p.getxattr(path, name);
      if (typeof r === 'number') res = r;
      else if (valueBuf.length === 0) res = r.length;
      else if (r.length > valueBuf.length) res = Errno.ERANGE;
      else res = r.copy(valueBuf);
    } catch (err) {
      res = p.fs.handlerError('getxattr', path, err);
    }
    signal(res, valueBuf.buffer);
  };
  fuse._op_listxattr = (signal: Cb, path: string, listBuf: Buffer) => {
    let res: number;
    try {
      const r = p.listxattr(path);
      if (typeof r === 'number') res = r;
      else {
        const list = Buffer.concat(r.map((n) => Buffer.from(n + '\0', 'utf8')));
        if (listBuf.length === 0) res = list.length;
        else if (list.length > listBuf.length) res = Errno.ERANGE;
        else res = list.copy(listBuf);
      }
    } catch (err) {
      res = p.fs.handlerError('listxattr', path, err);
    }
    signal(res, listBuf.buffer);
  };
}

class FuseNativeMount implements FuseMount {
  private unmounting: Promise<void> | undefined;

  constructor(
    readonly mountpoint: string,
    private readonly fuse: FuseInstance,
    private readonly logger: Logger,
  ) {}

  unmount(): Promise<void> {
    this.unmounting ??= new Promise<void>((res, rej) => {
      this.fuse.unmount((err) => (err ? rej(err) : res()));
    }).then(
      () => {
        untrackMount(this);
        this.logger.info({ mountpoint: this.mountpoint }, 'fuse: unmounted');
      },
      (err: unknown) => {
        this.unmounting = undefined;
        throw DfError.from(err, `unmount ${this.mountpoint}`);
      },
    );
    return this.unmounting;
  }

  async check(): Promise<boolean> {
    if (this.unmounting) return false;
    const m = readMountInfo().find((x) => x.mountpoint === this.mountpoint);
    if (!m || !isFuseType(m.fstype)) return false;
    return (await probeMount(this.mountpoint)) === 'alive';
  }
}

/**
 * FuseBinding over fuse-native (libfuse 2, high-level path API, bundled libfuse.so). Mount options: see
 * fuseOptionString. Times reach the kernel with millisecond precision (fuse-native's stat wire format).
 * Every read goes through the LayerFs (MountOptions.direct is ignored).
 */
export class FuseNativeBinding implements FuseBinding {
  constructor(private readonly defaults: MountOptions = {}) {}

  async mount(mountpoint: string, fs: LayerFs, opts: MountOptions = {}): Promise<FuseMount> {
    const options = { ...this.defaults, ...opts };
    const logger = options.logger ?? silentLogger;
    const mp = resolve(mountpoint);
    if (options.mkdir) await mkdir(mp, { recursive: true });
    const Fuse = fuseClass();
    const pathOps = new PathOps(fs);
    const df: DfFuseOpts = {
      fsname: options.fsname ?? 'dfnode',
      cacheTimeoutSec: options.cacheTimeoutSec ?? 86_400,
      allowOther: options.allowOther ?? true,
    };
    const fuse = new Fuse(mp, makeOps(pathOps), { timeout: options.handlerTimeoutMs ?? 150_000, df });
    installXattrHandlers(fuse as unknown as Record<string, any>, pathOps);
    try {
      await new Promise<void>((res, rej) => fuse.mount((err) => (err ? rej(err) : res())));
    } catch (err) {
      throw new DfError(
        'IO',
        `FUSE mount at ${mp} failed: ${(err as Error).message}; is /dev/fuse available and the mountpoint an empty directory not in use?`,
        { cause: err },
      );
    }
    const m = new FuseNativeMount(mp, fuse, logger);
    trackMount(m);
    logger.info({ mountpoint: mp, fsname: df.fsname }, 'fuse: mounted');
    return m;
  }
}
