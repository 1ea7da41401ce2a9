import { DfError } from '../errors.js';
import type { Attr } from './attr.js';
import { Errno } from './errno.js';
import type { LayerFs } from './layer-fs.js';
import type { Dispatch, NativeAddon } from './native-addon.js';

// operation codes of native/dfnode_fuse.h
const OP_LOOKUP = 1;
const OP_GETATTR = 2;
const OP_OPEN = 3;
const OP_READ = 4;
const OP_READLINK = 5;
const OP_GETXATTR = 6;
const OP_LISTXATTR = 7;
const OP_STATFS = 8;
const OP_OPENDIR = 9;
const OP_RELEASE = 10;
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
  'release',
];

/** Numbers per attribute in the Float64Arrays given to replyAttr and replyOpendir (A_* of dfnode_fuse.h). */
const ATTR_N = 11;

function packAttr(attr: Attr, into: Float64Array, at: number): void {
  into[at] = attr.ino;
  into[at + 1] = attr.mode;
  into[at + 2] = attr.nlink;
  into[at + 3] = attr.uid;
  into[at + 4] = attr.gid;
  into[at + 5] = attr.rdev;
  into[at + 6] = attr.size;
  into[at + 7] = attr.blocks;
  into[at + 8] = attr.blksize;
  into[at + 9] = attr.mtimeSec;
  into[at + 10] = attr.mtimeNsec;
}

/**
 * Answers the requests of one native mount from a LayerFs. Every handler is guarded: an exception or a
 * rejected promise answers EIO (the native side also answers EIO if this function throws), and reads still
 * unanswered after the handler timeout are answered EIO by a sweep.
 */
export class NativeDispatcher {
  private readonly attrBuf = new Float64Array(ATTR_N);
  private readonly statfsBuf = new Float64Array(11);
  /** id → deadline (ms) of reads waiting on the reader. */
  private readonly pendingReads = new Map<number, number>();
  private sweepTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly addon: NativeAddon,
    private readonly fs: LayerFs,
    private readonly timeoutMs: number,
  ) {}

  readonly dispatch: Dispatch = (op, id, ino, arg, size, name, pid) => {
    const { addon, fs } = this;
    try {
      switch (op) {
        case OP_LOOKUP:
          return this.attr(id, fs.lookup(ino, name ?? ''));
        case OP_GETATTR:
          return this.attr(id, fs.getattr(ino));
        case OP_OPEN: {
          const r = fs.open(ino, arg ?? 0);
          if (r < 0) addon.replyErr(id, r);
          else addon.replyOpen(id);
          return;
        }
        case OP_READ:
          return this.read(id, ino, arg ?? 0, size, pid ?? 0);
        case OP_READLINK: {
          const r = fs.readlink(ino);
          if (typeof r === 'number') addon.replyErr(id, r);
          else addon.replyBuf(id, Buffer.from(r, 'utf8'));
          return;
        }
        case OP_GETXATTR: {
          const r = fs.getxattr(ino, name ?? '');
          if (typeof r === 'number') addon.replyErr(id, r);
          else addon.replyBuf(id, r);
          return;
        }
        case OP_LISTXATTR: {
          const r = fs.listxattr(ino);
          if (typeof r === 'number') addon.replyErr(id, r);
          else addon.replyBuf(id, Buffer.from(r.map((n) => n + '\0').join(''), 'utf8'));
          return;
        }
        case OP_STATFS:
          return this.statfs(id);
        case OP_OPENDIR:
          return this.opendir(id, ino);
        case OP_RELEASE:
          // answered in C already (forwardRelease): a notification
          fs.release(ino);
          return;
        default:
          addon.replyErr(id, Errno.ENOSYS);
      }
    } catch (err) {
      addon.replyErr(id, fs.handlerError(OP_NAMES[op] ?? `op ${op}`, `inode ${ino}`, err));
    }
  };

  private attr(id: number, r: number | Attr): void {
    if (typeof r === 'number') {
      this.addon.replyErr(id, r);
      return;
    }
    packAttr(r, this.attrBuf, 0);
    this.addon.replyAttr(id, this.attrBuf);
  }

  private statfs(id: number): void {
    const s = this.fs.statfs();
    const buf = this.statfsBuf;
    buf[0] = s.bsize;
    buf[1] = s.frsize;
    buf[2] = s.blocks;
    buf[3] = s.bfree;
    buf[4] = s.bavail;
    buf[5] = s.files;
    buf[6] = s.ffree;
    buf[7] = s.favail;
    buf[8] = s.fsid;
    buf[9] = s.flag;
    buf[10] = s.namemax;
    this.addon.replyStatfs(id, buf);
  }

  private opendir(id: number, ino: number): void {
    const { addon, fs } = this;
    const ok = fs.opendir(ino);
    if (ok < 0) return void addon.replyErr(id, ok);
    const ents = fs.readdir(ino);
    if (typeof ents === 'number') return void addon.replyErr(id, ents);
    const self = fs.getattr(ino);
    if (typeof self === 'number') return void addon.replyErr(id, self);
    const parent = ino === 1 ? self : fs.lookup(ino, '..');
    if (typeof parent === 'number') return void addon.replyErr(id, parent);
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
    addon.replyOpendir(id, Buffer.from(names, 'utf8'), attrs, n);
  }

  private read(id: number, ino: number, offset: number, size: number, pid: number): void {
    const { addon, fs } = this;
    this.pendingReads.set(id, Date.now() + this.timeoutMs);
    this.sweepTimer ??= setInterval(() => this.sweep(), Math.min(1000, this.timeoutMs)).unref();
    fs.read(ino, offset, size, undefined, { pid, blockedMs: 0 }).then(
      (r) => {
        if (!this.pendingReads.delete(id)) return;
        if (typeof r === 'number') addon.replyErr(id, r);
        else addon.replyBuf(id, r);
      },
      (err: unknown) => {
        if (!this.pendingReads.delete(id)) return;
        addon.replyErr(id, fs.handlerError('read', `inode ${ino}`, err));
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
      this.addon.replyErr(id, Errno.EIO);
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
