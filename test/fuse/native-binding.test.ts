// NativeFuseBinding (native/dfnode_fuse, libfuse3 low-level) mounting a LayerFs over a real DFB blob, checked
// through the kernel. Builds the addon first when it is missing or stale; needs root and /dev/fuse.
// The filesystem is served by this process: everything touching the mount is asynchronous (a synchronous
// call on the mount would block the JS thread that answers it).
import { execFile } from 'node:child_process';
import { readdirSync, readlinkSync } from 'node:fs';
import { lstat, mkdir, readFile, readdir, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EntryType } from '../../src/blob/types.js';
import { DfError } from '../../src/errors.js';
import { LayerFs } from '../../src/fuse/layer-fs.js';
import { readMountInfo } from '../../src/fuse/mounts.js';
import {
  NativeFuseBinding,
  nativeOptionString,
  type NativeFuseMount,
} from '../../src/fuse/native-binding.js';
import { hasTool } from '../helpers/require.js';
import { writeDfb } from '../helpers/dfb.js';
import { sha256Hex } from '../helpers/digest.js';
import { requireNativeMounts } from '../helpers/native.js';
import { tempDir } from '../helpers/temp.js';
import { BIG, DfbFileReader, RICH, base, bigContent } from './layer.js';

const exec = promisify(execFile);

const req = requireNativeMounts({
  'getfattr in PATH (apt-get install attr)': hasTool('getfattr'),
});

const HUGE = bigContent(8 << 20);

/** Open /dev/fuse descriptors of this process. */
function fuseFds(): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === '/dev/fuse') n++;
    } catch {
      // closed meanwhile
    }
  }
  return n;
}

describe('nativeOptionString', () => {
  it('is read-only with 1 MiB reads and an escaped fsname', () => {
    expect(nativeOptionString({ fsname: 'a,b\\c', allowOther: true, maxRead: 1 << 20 })).toBe(
      'ro,default_permissions,fsname=a_b_c,subtype=dfb,max_read=1048576,allow_other',
    );
  });
});

describe.skipIf(req.skip)('NativeFuseBinding (kernel)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let reader: DfbFileReader;
  let fs: LayerFs;
  let mp: string;
  let m: NativeFuseMount;
  let fdsBefore: number;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfnode-native-'));
    const { path } = await writeDfb(dir, 'rich', {
      ...RICH,
      files: [...(RICH.files ?? []), { path: 'data/huge', content: HUGE }],
      entries: [
        ...(RICH.entries ?? []),
        { ...base, path: 'data/link', type: EntryType.Symlink, linkTarget: 'huge' },
      ],
    });
    reader = await DfbFileReader.open(path);
    fs = new LayerFs({ toc: reader.toc, reader, readTimeoutMs: 5000 });
    mp = join(dir, 'mnt');
    await mkdir(mp);
    fdsBefore = fuseFds();
    m = await new NativeFuseBinding().mount(mp, fs, { fsname: 'dfnode-native-test' });
  });

  afterAll(async () => {
    try {
      await m?.unmount();
      await reader?.close();
    } finally {
      await cleanup?.();
    }
  });

  it('is a fuse.dfb mount with our fsname that answers', async () => {
    const mi = readMountInfo().find((x) => x.mountpoint === mp);
    expect(mi?.fstype).toBe('fuse.dfb');
    expect(mi?.source).toBe('dfnode-native-test');
    expect(await m.check()).toBe(true);
    expect(NativeFuseBinding.fuseVersion()).toBeGreaterThanOrEqual(30);
  });

  it('st_ino is the TOC inode; hard links share it', async () => {
    expect((await stat(mp)).ino).toBe(1);
    const a = await stat(join(mp, 'bin/busybox'));
    expect(a.ino).toBe(reader.toc.lookup('bin/busybox'));
    expect((await stat(join(mp, 'bin/ls'))).ino).toBe(a.ino);
    expect((await stat(join(mp, 'usr/bin/cat'))).ino).toBe(a.ino);
    expect(a.nlink).toBe(3);
    expect(a.mode).toBe(0o104755);
    expect(a.size).toBe(BIG.length);
    // readdir (readdirplus) gives the same inode numbers
    const { stdout } = await exec('ls', ['-i1', join(mp, 'bin')]);
    const inos = stdout
      .trim()
      .split('\n')
      .map((l) => Number(l.trim().split(/\s+/)[0]));
    expect(new Set(inos)).toEqual(new Set([a.ino]));
  });

  it('mtimes keep nanoseconds; owners pass through', async () => {
    const s = await stat(join(mp, 'etc/hostname'), { bigint: true });
    expect(s.mtimeNs).toBe(1_700_000_000_123_456_789n);
    expect(s.uid).toBe(1000n);
    expect(s.gid).toBe(1001n);
  });

  it('entry types, readdir with . and .., readlink', async () => {
    expect(await readdir(join(mp, 'etc'))).toEqual(['empty', 'hostname', 'removed']);
    const { stdout } = await exec('ls', ['-a1', join(mp, 'etc')]);
    expect(stdout.split('\n').slice(0, 2)).toEqual(['.', '..']);
    expect(await readlink(join(mp, 'usr/bin/sh'))).toBe('../../bin/busybox');
    expect(await readlink(join(mp, 'data/link'))).toBe('huge');
    const nul = await lstat(join(mp, 'dev/null'));
    expect(nul.isCharacterDevice()).toBe(true);
    expect(nul.rdev).toBe(0x103);
    expect((await lstat(join(mp, 'dev/sda1'))).rdev).toBe(0x801);
    expect((await lstat(join(mp, 'run/fifo'))).isFIFO()).toBe(true);
    await expect(stat(join(mp, 'etc/nope'))).rejects.toMatchObject({ code: 'ENOENT' });
    // negative entry cached: asking again still answers ENOENT
    await expect(stat(join(mp, 'etc/nope'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('a whiteout is a 0/0 character device with mode 0', async () => {
    const w = await lstat(join(mp, 'etc/removed'));
    expect(w.isCharacterDevice()).toBe(true);
    expect(w.rdev).toBe(0);
    expect(w.mode).toBe(0o020000);
  });

  it('xattrs: opaque directory, binary and empty values, ENODATA, size probe', async () => {
    const opq = await exec('getfattr', [
      '--absolute-names',
      '-n',
      'trusted.overlay.opaque',
      '--only-values',
      join(mp, 'var/cache'),
    ]);
    expect(opq.stdout).toBe('y');
    const { stdout } = await exec('getfattr', [
      '--absolute-names',
      '-d',
      '-m',
      '-',
      '-e',
      'hex',
      join(mp, 'bin/busybox'),
    ]);
    expect(stdout).toContain('user.bin=0x00ff0080');
    expect(stdout).toContain('security.capability=0x01000002200000');
    expect(stdout).toMatch(/^user\.empty=0x$/m);
    const none = await exec('getfattr', [
      '--absolute-names',
      '-n',
      'user.nope',
      join(mp, 'bin/busybox'),
    ]).catch((e: { stderr: string }) => e);
    expect((none as { stderr: string }).stderr).toMatch(/No such attribute/);
  });

  it('reads: small, empty, and an 8 MiB file in large requests (sha256 through the kernel)', async () => {
    expect(await readFile(join(mp, 'etc/hostname'), 'utf8')).toBe('dfnode\n');
    expect((await readFile(join(mp, 'etc/empty'))).length).toBe(0);
    expect((await readFile(join(mp, 'bin/ls'))).equals(BIG)).toBe(true);
    const before = m.info();
    const { stdout } = await exec('sha256sum', [join(mp, 'data/huge')]);
    expect(stdout.split(' ')[0]).toBe(sha256Hex(HUGE));
    const after = m.info();
    expect(after.readBytes - before.readBytes).toBeGreaterThanOrEqual(HUGE.length);
    // the kernel sends more than fuse-native's 128 KiB per request
    expect(after.maxRead).toBeGreaterThan(128 * 1024);
  });

  it('writes are refused with EROFS', async () => {
    const err = await readFile(join(mp, 'etc/hostname'), { flag: 'r+' }).catch(
      (e: NodeJS.ErrnoException) => e,
    );
    expect((err as NodeJS.ErrnoException).code).toBe('EROFS');
    await expect(mkdir(join(mp, 'x'))).rejects.toMatchObject({ code: 'EROFS' });
  });

  it('a rejecting reader gives EIO; the mount keeps serving', async () => {
    reader.fail = new DfError('NETWORK', 'registry unreachable');
    try {
      await expect(readFile(join(mp, 'var/cache/keep'))).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      reader.fail = undefined;
    }
    expect(await readFile(join(mp, 'var/cache/keep'), 'utf8')).toBe('keep');
    expect(await m.check()).toBe(true);
  });

  it('an exception thrown in a handler answers EIO, never a crash or a hang', async () => {
    const orig = fs.getxattr.bind(fs);
    fs.getxattr = () => {
      throw new Error('boom');
    };
    try {
      const r = await exec('getfattr', ['--absolute-names', '-n', 'user.bin', join(mp, 'bin/busybox')]).catch(
        (e: { stderr: string }) => e,
      );
      expect((r as { stderr: string }).stderr).toMatch(/Input\/output error/);
    } finally {
      fs.getxattr = orig;
    }
    expect(await m.check()).toBe(true);
  });

  it('/dev/fuse is not inherited by child processes', async () => {
    expect(fuseFds()).toBeGreaterThan(fdsBefore);
    const { stdout } = await exec('sh', ['-c', 'for f in /proc/$$/fd/*; do readlink "$f"; done; true']);
    expect(stdout).not.toContain('/dev/fuse');
  });

  it('unmount leaves nothing (mount, /dev/fuse fd) and is safe twice', async () => {
    await m.unmount();
    await m.unmount();
    expect(readMountInfo().some((x) => x.mountpoint === mp)).toBe(false);
    expect(fuseFds()).toBe(fdsBefore);
    expect(await m.check()).toBe(false);
    expect(m.info().alive).toBe(false);
    expect(await readdir(mp)).toEqual([]);
  });
});
