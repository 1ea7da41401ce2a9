/**
 * probeMount (the snapshotter's start-up proof that FUSE mounts work): an empty layer is mounted with the
 * real native binding on a kernel FUSE mount, answers, and is gone afterwards with its directory; a probe
 * that cannot mount rejects and leaves nothing mounted.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { probeMount } from '../../src/fuse/mount-probe.js';
import { readMountInfo } from '../../src/fuse/mounts.js';
import { NativeFuseBinding } from '../../src/fuse/native-binding.js';
import type { FuseBinding, FuseMount } from '../../src/fuse/types.js';
import { requireNativeMounts } from '../helpers/native.js';
import { tempDir } from '../helpers/temp.js';

const req = requireNativeMounts();

describe.skipIf(req.skip)('probeMount (kernel)', () => {
  it('mounts an empty layer that answers, then unmounts it and removes its directory', async () => {
    const { dir, cleanup } = await tempDir('dfnode-probe-');
    try {
      const native = new NativeFuseBinding();
      const seen: { entries: string[]; fstype: string | undefined }[] = [];
      // watch the mount while it is up: an empty directory on a FUSE filesystem of its own
      const binding: FuseBinding = {
        mount: async (mountpoint, fs, opts) => {
          const m: FuseMount = await native.mount(mountpoint, fs, opts);
          seen.push({
            entries: await readdir(mountpoint),
            fstype: readMountInfo().find((x) => x.mountpoint === mountpoint)?.fstype,
          });
          return m;
        },
      };
      const mp = join(dir, 'root', 'probe');
      await probeMount(binding, mp);
      expect(seen).toEqual([{ entries: [], fstype: 'fuse.dfb' }]);
      expect(readMountInfo().some((x) => x.mountpoint === mp)).toBe(false);
      expect(existsSync(mp)).toBe(false);
    } finally {
      await cleanup();
    }
  });

  it('rejects when it cannot mount, leaving nothing mounted', async () => {
    const { dir, cleanup } = await tempDir('dfnode-probe-');
    try {
      await mkdir(dir, { recursive: true });
      await writeFile(join(dir, 'file'), 'x');
      const mp = join(dir, 'file', 'probe'); // under a regular file: no directory to mount on
      await expect(probeMount(new NativeFuseBinding(), mp)).rejects.toThrow();
      expect(readMountInfo().some((x) => x.mountpoint.startsWith(dir))).toBe(false);
    } finally {
      await cleanup();
    }
  });
});
