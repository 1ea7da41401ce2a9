import { Errno, type FsResult } from './errno.js';
import type { LayerFs } from './layer-fs.js';
import type { Attr, DirEntry, StatFs } from './attr.js';

/**
 * Path-based requests (what libfuse's high-level API and the tests' TestBinding deliver) answered by a LayerFs.
 * Each request resolves the path through LayerFs's cache and never throws or rejects: an exception in this
 * glue becomes EIO (logged, rate-limited).
 */
export class PathOps {
  constructor(readonly fs: LayerFs) {}

  private run<T>(op: string, path: string, fn: () => FsResult<T>): FsResult<T> {
    try {
      return fn();
    } catch (err) {
      return this.fs.handlerError(op, path, err);
    }
  }

  private withIno<T>(op: string, path: string, fn: (ino: number) => FsResult<T>): FsResult<T> {
    return this.run(op, path, () => {
      const ino = this.fs.resolve(path);
      return ino < 0 ? ino : fn(ino);
    });
  }

  getattr(path: string): FsResult<Attr> {
    return this.withIno('getattr', path, (ino) => this.fs.getattr(ino));
  }

  access(path: string, mode: number): FsResult<0> {
    return this.withIno('access', path, (ino) => this.fs.access(ino, mode));
  }

  opendir(path: string): FsResult<0> {
    return this.withIno('opendir', path, (ino) => this.fs.opendir(ino));
  }

  /** Entries including '.' and '..' (libfuse's high-level API does not add them). */
  readdir(path: string): FsResult<DirEntry[]> {
    return this.withIno('readdir', path, (ino) => {
      const entries = this.fs.readdir(ino);
      if (typeof entries === 'number') return entries;
      const self = this.fs.getattr(ino);
      const parent = this.fs.lookup(ino, '..');
      if (typeof self === 'number') return self;
      if (typeof parent === 'number') return parent;
      return [{ name: '.', ino, attr: self }, { name: '..', ino: parent.ino, attr: parent }, ...entries];
    });
  }

  open(path: string, flags: number): FsResult<0> {
    return this.withIno('open', path, (ino) => this.fs.open(ino, flags));
  }

  async read(path: string, offset: number, length: number): Promise<FsResult<Buffer>> {
    try {
      const ino = this.fs.resolve(path);
      if (ino < 0) return ino;
      return await this.fs.read(ino, offset, length);
    } catch (err) {
      return this.fs.handlerError('read', path, err);
    }
  }

  readlink(path: string): FsResult<string> {
    return this.withIno('readlink', path, (ino) => this.fs.readlink(ino));
  }

  getxattr(path: string, name: string): FsResult<Buffer> {
    return this.withIno('getxattr', path, (ino) => this.fs.getxattr(ino, name));
  }

  listxattr(path: string): FsResult<string[]> {
    return this.withIno('listxattr', path, (ino) => this.fs.listxattr(ino));
  }

  statfs(): FsResult<StatFs> {
    return this.run('statfs', '/', () => this.fs.statfs());
  }

  /** Every modifying request. */
  readOnly(): number {
    return Errno.EROFS;
  }
}
