import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Toc } from '../blob/toc.js';
import { EntryType } from '../blob/types.js';
import { BlobCache } from '../cache/blob-cache.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { Errno } from './errno.js';
import type { LayerFs } from './layer-fs.js';
import { isFuseType, lazyUnmount, probeMount, readMountInfo, trackMount, untrackMount } from './mounts.js';
import type { Attr, FuseBinding, FuseMount, MountOptions } from './types.js';

const require = createRequire(import.meta.url);

/** What native/dfnode_fuse.c exports. Replies return false for an id answered already (stale). */
interface Addon {
  mount(mountpoint: string, options: string, dispatch: Dispatch, cfg: NativeCfg): Session;
  unmount(s: Session): void;
  info(s: Session): NativeInfo;
  replyErr(id: number, errno: number): boolean;
  replyAttr(id: number, attr: Float64Array): boolean;
  replyOpen(id: number): boolean;
  replyOpendir(id: number, names: Buffer, attrs: Float64Array, count: number): boolean;
  replyBuf(id: number, data: Uint8Array): boolean;
  replyStatfs(id: number, f: Float64Array): boolean;
  directMark(s: Session, unit: number, present: boolean): void;
  directComplete(s: Session, complete: boolean): void;
  directReset(s: Session, bits: Uint8Array): void;
  fuseVersion(): number;
}

type Session = { readonly __session: unique symbol };
type Dispatch = (
  op: number,
  id: number,
  ino: number,
  a: number | undefined,
  size: number,
  name?: string,
) => void;

interface NativeCfg {
  threads: number;
  entryTimeout: number;
  attrTimeout: number;
  negativeTimeout: number;
  direct?: DirectTables;
}

/** What native/direct_read.c copies at mount to answer reads of cached blocks on the reader threads. */
interface DirectTables {
  /** The cache data file (stored bytes at blob offsets). */
  path: string;
  /** Prefix sums over the blocks (n + 1 entries): stream offsets and blob offsets. */
  streamOffsets: Float64Array;
  blobOffsets: Float64Array;
  codecs: Uint8Array;
  /** By inode - 1: a regular file's offset in the stream and its size; size -1 for anything else. */
  fileOffsets: Float64Array;
  fileSizes: Float64Array;
  /** Units present now (blocks, then the TOC unit), and whether all are. */
  present: Uint8Array;
  complete: boolean;
}

/**
 * A blob's TOC and its local cache: given to a mount, reads whose blocks are all in the cache are answered in
 * C on the FUSE reader threads (one pread, LZ4 decode, reply), without a hop to the JS thread. Blocks are
 * verified (SHA-256 against the TOC) before the cache takes them and the complete file against the blob
 * digest; the C path does not hash them again on every read, whatever BlobFetcher's verifyCachedReads says
 * (that option only applies to reads served by JS). Set `directReads: false` (or DFNODE_FUSE_DIRECT_READS=0)
 * to have every read go through JS.
 */
export interface DirectReadSource {
  toc: Toc;
  cache: BlobCache;
}

/** Counters of one mount (kernel requests as the reader threads saw them). */
export interface NativeInfo {
  /** Served by this process: not unmounted and the kernel did not end the connection. */
  alive: boolean;
  reads: number;
  readBytes: number;
  /** Largest read request the kernel sent (bytes). */
  maxRead: number;
  requests: number;
  /** Reads answered in C from the cache file (direct reads), their bytes, and reads they passed to JS. */
  directReads: number;
  directBytes: number;
  directFallbacks: number;
}

// operation codes of dfnode_fuse.c
const OP_LOOKUP = 1;
const OP_GETATTR = 2;
const OP_OPEN = 3;
const OP_READ = 4;
const OP_READLINK = 5;
const OP_GETXATTR = 6;
const OP_LISTXATTR = 7;
const OP_STATFS = 8;
const OP_OPENDIR = 9;
const OP_NAMES = [
  '',
  'lookup',
  'getattr',
  'open',
  'read',
  'readlink',
  'getxattr',
  'listxattr',
  'statfs',
  'opendir',
];

const ATTR_N = 11;

function packAttr(a: Attr, f: Float64Array, at: number): void {
  f[at] = a.ino;
  f[at + 1] = a.mode;
  f[at + 2] = a.nlink;
  f[at + 3] = a.uid;
  f[at + 4] = a.gid;
  f[at + 5] = a.rdev;
  f[at + 6] = a.size;
  f[at + 7] = a.blocks;
  f[at + 8] = a.blksize;
  f[at + 9] = a.mtimeSec;
  f[at + 10] = a.mtimeNsec;
}

/** native/ at the package root, from src/fuse/ (tsx, vitest) or dist/src/fuse/ (compiled). */
function nativeDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    if (existsSync(join(dir, 'native', 'binding.gyp'))) return join(dir, 'native');
    dir = dirname(dir);
  }
  return resolve(dirname(fileURLToPath(import.meta.url)), '../../native');
}

/** Path of the built addon (DFNODE_FUSE_ADDON overrides). */
export function nativeAddonPath(): string {
  return process.env.DFNODE_FUSE_ADDON ?? join(nativeDir(), 'build', 'Release', 'dfnode_fuse.node');
}

let addon: Addon | undefined;
let loadError: Error | undefined;

function load(): Addon {
  if (addon) return addon;
  if (loadError) throw loadError;
  const path = nativeAddonPath();
  try {
    addon = require(path) as Addon;
    return addon;
  } catch (err) {
    loadError = new DfError(
      'UNSUPPORTED',
      `the native FUSE addon could not be loaded from ${path} (${(err as Error).message}); build it with ` +
        '`npm run build:native` (needs libfuse3-dev, pkg-config and a C compiler)',
      { cause: err },
    );
    throw loadError;
  }
}

/** The libfuse3 `-o` string. */
export function nativeOptionString(o: { fsname: string; allowOther: boolean; maxRead: number }): string {
  const opts = [
    'ro',
    'default_permissions',
    `fsname=${o.fsname.replace(/[,\\]/g, '_')}`,
    'subtype=dfb',
    `max_read=${o.maxRead}`,
  ];
  if (o.allowOther) opts.push('allow_other');
  return opts.join(',');
}

export interface NativeMountOptions extends MountOptions {
  /** Reader threads taking requests from /dev/fuse. Default 2. */
  threads?: number;
  /** Largest read request (bytes); the kernel may cap it lower. Default 1 MiB. */
  maxRead?: number;
  /**
   * Serve reads of cached blocks in C (see DirectReadSource). Default: when the LayerFs reads through a
   * BlobFetcher (anything with `toc` and a BlobCache `cache`), that one; false: never.
   */
  directReads?: DirectReadSource | false;
}

/** The DirectReadSource of a LayerFs whose reader is a BlobFetcher (duck-typed: toc + BlobCache). */
function directSourceOf(fs: LayerFs): DirectReadSource | undefined {
  const reader = fs.reader as { toc?: unknown; cache?: unknown };
  if (reader.toc !== fs.toc || !(reader.cache instanceof BlobCache)) return undefined;
  return { toc: fs.toc, cache: reader.cache };
}

/** Copies the block table and file extents of a TOC into typed arrays for native/direct_read.c. */
export function directTables(src: DirectReadSource): DirectTables | undefined {
  const { toc, cache } = src;
  if (cache.unitCount !== toc.blockCount + 1) return undefined; // layout not set, or not this TOC's cache
  const n = toc.blockCount;
  const streamOffsets = new Float64Array(n + 1);
  const blobOffsets = new Float64Array(n + 1);
  const codecs = new Uint8Array(n);
  for (let i = 0; i <= n; i++) {
    streamOffsets[i] = toc.blockStreamOffset(i);
    blobOffsets[i] = toc.blockOffset(i);
    if (i < n) codecs[i] = toc.blockCodec(i);
  }
  const fileOffsets = new Float64Array(toc.inodeCount);
  const fileSizes = new Float64Array(toc.inodeCount).fill(-1);
  for (let ino = 1; ino <= toc.inodeCount; ino++) {
    if (toc.type(ino) !== EntryType.File) continue;
    const st = toc.stat(ino);
    fileOffsets[ino - 1] = st.dataOffset;
    fileSizes[ino - 1] = st.size;
  }
  return {
    path: cache.dataPath,
    streamOffsets,
    blobOffsets,
    codecs,
    fileOffsets,
    fileSizes,
    present: cache.snapshot(),
    complete: cache.isComplete,
  };
}

/**
 * Answers the requests of one mount from a LayerFs. Every handler is guarded: an exception or a rejected
 * promise answers EIO (the native side also answers EIO if this function throws), and reads still
 * unanswered after handlerTimeoutMs are answered EIO by a sweep.
 */
class Dispatcher {
  private readonly scratch = new Float64Array(ATTR_N);
  private readonly statfsBuf = new Float64Array(11);
  /** id → deadline (ms) of reads waiting on the reader. */
  private readonly pendingReads = new Map<number, number>();
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly a: Addon,
    private readonly fs: LayerFs,
    private readonly timeoutMs: number,
  ) {}

  readonly dispatch: Dispatch = (op, id, ino, arg, size, name) => {
    const { a, fs } = this;
    try {
      switch (op) {
        case OP_LOOKUP:
          return this.attr(id, fs.lookup(ino, name ?? ''));
        case OP_GETATTR:
          return this.attr(id, fs.getattr(ino));
        case OP_OPEN: {
          const r = fs.open(ino, arg ?? 0);
          if (r < 0) a.replyErr(id, r);
          else a.replyOpen(id);
          return;
        }
        case OP_READ:
          return this.read(id, ino, arg ?? 0, size);
        case OP_READLINK: {
          const r = fs.readlink(ino);
          if (typeof r === 'number') a.replyErr(id, r);
          else a.replyBuf(id, Buffer.from(r, 'utf8'));
          return;
        }
        case OP_GETXATTR: {
          const r = fs.getxattr(ino, name ?? '');
          if (typeof r === 'number') a.replyErr(id, r);
          else a.replyBuf(id, r);
          return;
        }
        case OP_LISTXATTR: {
          const r = fs.listxattr(ino);
          if (typeof r === 'number') a.replyErr(id, r);
          else a.replyBuf(id, Buffer.from(r.map((n) => n + '\0').join(''), 'utf8'));
          return;
        }
        case OP_STATFS: {
          const s = fs.statfs();
          const f = this.statfsBuf;
          f[0] = s.bsize;
          f[1] = s.frsize;
          f[2] = s.blocks;
          f[3] = s.bfree;
          f[4] = s.bavail;
          f[5] = s.files;
          f[6] = s.ffree;
          f[7] = s.favail;
          f[8] = s.fsid;
          f[9] = s.flag;
          f[10] = s.namemax;
          a.replyStatfs(id, f);
          return;
        }
        case OP_OPENDIR:
          return this.opendir(id, ino);
        default:
          a.replyErr(id, Errno.ENOSYS);
      }
    } catch (err) {
      a.replyErr(id, fs.handlerError(OP_NAMES[op] ?? `op ${op}`, `inode ${ino}`, err));
    }
  };

  private attr(id: number, r: number | Attr): void {
    if (typeof r === 'number') {
      this.a.replyErr(id, r);
      return;
    }
    packAttr(r, this.scratch, 0);
    this.a.replyAttr(id, this.scratch);
  }

  private opendir(id: number, ino: number): void {
    const { a, fs } = this;
    const ok = fs.opendir(ino);
    if (ok < 0) return void a.replyErr(id, ok);
    const ents = fs.readdir(ino);
    if (typeof ents === 'number') return void a.replyErr(id, ents);
    const self = fs.getattr(ino);
    if (typeof self === 'number') return void a.replyErr(id, self);
    const parent = ino === 1 ? self : fs.lookup(ino, '..');
    if (typeof parent === 'number') return void a.replyErr(id, parent);
    const n = ents.length + 2;
    const attrs = new Float64Array(n * ATTR_N);
    packAttr(self, attrs, 0);
    packAttr(parent, attrs, ATTR_N);
    let names = '.\0..\0';
    for (let i = 0; i < ents.length; i++) {
      const e = ents[i]!;
      names += e.name + '\0';
      packAttr(e.attr, attrs, (i + 2) * ATTR_N);
    }
    a.replyOpendir(id, Buffer.from(names, 'utf8'), attrs, n);
  }

  private read(id: number, ino: number, offset: number, size: number): void {
    const { a, fs } = this;
    this.pendingReads.set(id, Date.now() + this.timeoutMs);
    this.sweepTimer ??= setInterval(() => this.sweep(), Math.min(1000, this.timeoutMs)).unref();
    fs.read(ino, offset, size).then(
      (r) => {
        if (!this.pendingReads.delete(id)) return;
        if (typeof r === 'number') a.replyErr(id, r);
        else a.replyBuf(id, r);
      },
      (err: unknown) => {
        if (!this.pendingReads.delete(id)) return;
        a.replyErr(id, fs.handlerError('read', `inode ${ino}`, err));
      },
    );
  }

  /** Answers EIO to reads older than the handler timeout (LayerFs bounds its reads; this is the backstop). */
  private sweep(): void {
    const now = Date.now();
    for (const [id, deadline] of this.pendingReads) {
      if (deadline > now) continue;
      this.pendingReads.delete(id);
      this.fs.handlerError(
        'read',
        `request ${id}`,
        DfError.timeout(`read not answered in ${this.timeoutMs} ms`),
      );
      this.a.replyErr(id, Errno.EIO);
    }
    if (this.pendingReads.size === 0 && this.sweepTimer) {
      clearInterval(this.sweepTimer);
      this.sweepTimer = undefined;
    }
  }

  close(): void {
    if (this.sweepTimer) clearInterval(this.sweepTimer);
    this.sweepTimer = undefined;
    this.pendingReads.clear();
  }
}

export class NativeFuseMount implements FuseMount {
  private unmounted: Promise<void> | undefined;

  constructor(
    readonly mountpoint: string,
    private readonly a: Addon,
    private readonly session: Session,
    private readonly dispatcher: Dispatcher,
    private readonly logger: Logger,
    private readonly stopDirect: () => void = () => {},
  ) {}

  /** Request counters of this mount. */
  info(): NativeInfo {
    return this.a.info(this.session);
  }

  unmount(): Promise<void> {
    this.unmounted ??= (async () => {
      // joins the reader threads, answers pending requests EIO, closes /dev/fuse and detaches the mount
      this.stopDirect();
      this.a.unmount(this.session);
      this.dispatcher.close();
      if (readMountInfo().some((m) => m.mountpoint === this.mountpoint)) await lazyUnmount(this.mountpoint);
      untrackMount(this);
      this.logger.info({ mountpoint: this.mountpoint }, 'fuse: unmounted');
    })().catch((err: unknown) => {
      this.unmounted = undefined;
      throw DfError.from(err, `unmount ${this.mountpoint}`);
    });
    return this.unmounted;
  }

  async check(): Promise<boolean> {
    if (this.unmounted || !this.a.info(this.session).alive) return false;
    const m = readMountInfo().find((x) => x.mountpoint === this.mountpoint);
    if (!m || !isFuseType(m.fstype)) return false;
    return (await probeMount(this.mountpoint)) === 'alive';
  }
}

/**
 * FuseBinding over native/dfnode_fuse (N-API, libfuse3 low-level API): inode-based requests straight to
 * LayerFs, reader threads off the JS thread, reads up to 1 MiB, nanosecond timestamps, readdirplus, and
 * /dev/fuse close-on-exec. Reads of blocks already in the layer's cache are answered in C on the reader
 * threads (see DirectReadSource). FuseNativeBinding is the fallback when the addon is not built (see available()).
 */
export class NativeFuseBinding implements FuseBinding {
  constructor(private readonly defaults: NativeMountOptions = {}) {}

  /** Whether the addon is built and loads. */
  static available(): boolean {
    try {
      load();
      return true;
    } catch {
      return false;
    }
  }

  /** libfuse version the addon runs against (e.g. 314), for logs. */
  static fuseVersion(): number {
    return load().fuseVersion();
  }

  async mount(mountpoint: string, fs: LayerFs, opts: NativeMountOptions = {}): Promise<NativeFuseMount> {
    const o = { ...this.defaults, ...opts };
    const logger = o.logger ?? silentLogger;
    const a = load();
    const mp = resolve(mountpoint);
    if (o.mkdir) await mkdir(mp, { recursive: true });
    const fsname = o.fsname ?? 'dfnode';
    const t = o.cacheTimeoutSec ?? 86_400;
    const dispatcher = new Dispatcher(a, fs, o.handlerTimeoutMs ?? 150_000);
    const directSrc =
      o.directReads === false || process.env.DFNODE_FUSE_DIRECT_READS === '0'
        ? undefined
        : (o.directReads ?? directSourceOf(fs));
    const direct = directSrc && directTables(directSrc);
    let session: Session;
    try {
      session = a.mount(
        mp,
        nativeOptionString({ fsname, allowOther: o.allowOther ?? true, maxRead: o.maxRead ?? 1 << 20 }),
        dispatcher.dispatch,
        { threads: o.threads ?? 2, entryTimeout: t, attrTimeout: t, negativeTimeout: t, direct },
      );
    } catch (err) {
      throw new DfError(
        'IO',
        `FUSE mount at ${mp} failed: ${(err as Error).message}; is /dev/fuse available and the mountpoint an empty directory not in use?`,
        { cause: err },
      );
    }
    // presence changes from now on (the tables above hold a snapshot taken in the same tick)
    let stopDirect: (() => void) | undefined;
    if (direct && directSrc) {
      const cache = directSrc.cache;
      const removeListener = cache.addUnitListener({
        present: (unit) => {
          a.directMark(session, unit, true);
          if (cache.isComplete) a.directComplete(session, true);
        },
        reset: () => a.directReset(session, cache.snapshot()),
      });
      // reads served in C do not pass BlobFetcher.read: keep the cache's last use (gc order) current
      let served = 0;
      const toucher = setInterval(() => {
        const n = a.info(session).directReads;
        if (n !== served) cache.touch();
        served = n;
      }, 30_000).unref();
      stopDirect = () => {
        clearInterval(toucher);
        removeListener();
      };
    }
    const m = new NativeFuseMount(mp, a, session, dispatcher, logger, stopDirect);
    trackMount(m);
    logger.info({ mountpoint: mp, fsname, binding: 'native', directReads: !!direct }, 'fuse: mounted');
    return m;
  }
}
