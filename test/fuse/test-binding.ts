import { resolve } from 'node:path';
import { DfError } from '../../src/errors.js';
import { Errno, type FsResult } from '../../src/fuse/errno.js';
import type { LayerFs } from '../../src/fuse/layer-fs.js';
import { PathOps } from '../../src/fuse/path-ops.js';
import type { FuseBinding, FuseMount, MountOptions } from '../../src/fuse/types.js';

/**
 * A mount without a kernel: requests are made by calling the mount's PathOps directly, exactly as the
 * fuse-native binding would deliver them. For unit tests of the filesystem and of code built on FuseBinding
 * on machines without /dev/fuse or root.
 */
export class TestMount extends PathOps implements FuseMount {
  private mounted = true;

  constructor(
    readonly mountpoint: string,
    fs: LayerFs,
    private readonly registry: Map<string, TestMount>,
  ) {
    super(fs);
  }

  async unmount(): Promise<void> {
    this.mounted = false;
    if (this.registry.get(this.mountpoint) === this) this.registry.delete(this.mountpoint);
  }

  async check(): Promise<boolean> {
    return this.mounted;
  }

  /** Whole content of a file, read in `chunk`-sized requests like the kernel does. */
  async readFile(path: string, chunk = 128 * 1024): Promise<FsResult<Buffer>> {
    if (!this.mounted) return Errno.ENOTCONN;
    const opened = this.open(path, 0);
    if (opened < 0) return opened;
    const parts: Buffer[] = [];
    for (let off = 0; ;) {
      const r = await this.read(path, off, chunk);
      if (typeof r === 'number') return r;
      if (r.length === 0) break;
      parts.push(r);
      off += r.length;
    }
    return Buffer.concat(parts);
  }
}

export class TestBinding implements FuseBinding {
  /** Mounts by mountpoint; a second mount on the same path is refused (EBUSY) like the kernel would. */
  readonly mounts = new Map<string, TestMount>();

  async mount(mountpoint: string, fs: LayerFs, _opts?: MountOptions): Promise<TestMount> {
    const mp = resolve(mountpoint);
    if (this.mounts.has(mp))
      throw new DfError('ALREADY_EXISTS', `test binding: ${mp} is already mounted; unmount it first`);
    const m = new TestMount(mp, fs, this.mounts);
    this.mounts.set(mp, m);
    return m;
  }
}
