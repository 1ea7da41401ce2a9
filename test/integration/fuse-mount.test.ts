// Real kernel FUSE mounts of DFB layers converted from tars, read through the kernel (fs calls, getfattr),
// and two layers stacked under overlayfs. Needs root, /dev/fuse, overlayfs and getfattr (apt: attr).
// Everything that touches the mount runs asynchronously: the filesystem is served by this very process, so a
// synchronous call (execFileSync, fs.*Sync) on the mount would deadlock it.
import { execFile } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { lstat, mkdir, readFile, readdir, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertLayer } from '../../converter/convert-layer.js';
import { bufferStream } from '../../converter/store-oci.js';
import { DfError } from '../../src/errors.js';
import { FuseNativeBinding } from '../../src/fuse/fuse-native-binding.js';
import { LayerFs } from '../../src/fuse/layer-fs.js';
import { cleanupStaleMounts, lazyUnmount, readMountInfo } from '../../src/fuse/mounts.js';
import type { FuseMount } from '../../src/fuse/types.js';
import { buildTar, sha256, type TarEntry } from '../fixtures/tar-builder.js';
import { requireConditions, hasTool } from '../helpers/require.js';
import { DfbFileReader, bigContent } from '../fuse/layer.js';
import { tempDir } from '../helpers/temp.js';

const exec = promisify(execFile);

const req = requireConditions({
  'root (FUSE and overlay mounts)': process.getuid?.() === 0,
  '/dev/fuse': existsSync('/dev/fuse'),
  'overlay filesystem':
    existsSync('/proc/filesystems') && readFileSync('/proc/filesystems', 'utf8').includes('overlay'),
  'getfattr in PATH (apt-get install attr)': hasTool('getfattr'),
});

const BIG = bigContent(1_000_000);
const MTIME = { sec: 1_700_000_000, nsec: 123_456_789 };

const LOWER: TarEntry[] = [
  { path: 'bin/', type: 'directory', mtime: MTIME },
  {
    path: 'bin/busybox',
    type: 'file',
    mode: 0o4755,
    data: BIG,
    mtime: MTIME,
    xattrs: { 'user.bin': Buffer.from([0, 255, 0, 128]), 'user.empty': '' },
  },
  { path: 'bin/ls', type: 'link', linkname: 'bin/busybox' },
  { path: 'bin/sh', type: 'symlink', linkname: 'busybox', mtime: MTIME },
  { path: 'dev/', type: 'directory' },
  { path: 'dev/null', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
  { path: 'dev/sda1', type: 'block-device', mode: 0o660, devmajor: 8, devminor: 1 },
  { path: 'run/', type: 'directory' },
  { path: 'run/fifo', type: 'fifo', mode: 0o600 },
  { path: 'etc/', type: 'directory', mode: 0o755 },
  { path: 'etc/hostname', type: 'file', data: 'lower\n', uid: 1000, gid: 1001, mtime: MTIME },
  { path: 'etc/gone', type: 'file', data: 'deleted by the upper layer\n' },
  { path: 'etc/empty', type: 'file', data: '' },
  { path: 'fail/', type: 'directory' },
  { path: 'fail/me', type: 'file', data: bigContent(50_000) },
  { path: 'opq/', type: 'directory' },
  { path: 'opq/old1', type: 'file', data: 'hidden\n' },
  { path: 'opq/sub/', type: 'directory' },
  { path: 'opq/sub/old2', type: 'file', data: 'hidden\n' },
];

const UPPER: TarEntry[] = [
  { path: 'etc/', type: 'directory', mode: 0o755 },
  { path: 'etc/.wh.gone', type: 'file', data: '' },
  { path: 'etc/hostname', type: 'file', data: 'upper\n' },
  { path: 'opq/', type: 'directory' },
  { path: 'opq/.wh..wh..opq', type: 'file', data: '' },
  { path: 'opq/new', type: 'file', data: 'new\n' },
];

describe.skipIf(req.skip)('FUSE mount of DFB layers (kernel)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const readers: DfbFileReader[] = [];
  const mounts: FuseMount[] = [];
  let lowerReader: DfbFileReader;
  let lowerMp: string;
  let upperMp: string;
  let merged: string;
  let overlayMounted = false;

  async function layer(name: string, entries: TarEntry[]): Promise<{ mp: string; reader: DfbFileReader }> {
    const tar = buildTar(entries);
    const out = join(dir, `${name}.dfb`);
    await convertLayer(
      bufferStream(tar),
      { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(tar), size: tar.length },
      out,
      { blockSize: 64 * 1024, workers: 1, tmpDir: dir },
    );
    const reader = await DfbFileReader.open(out);
    readers.push(reader);
    const mp = join(dir, 'mnt', name);
    await mkdir(mp, { recursive: true });
    const fs = new LayerFs({ toc: reader.toc, reader, readTimeoutMs: 5000 });
    mounts.push(await new FuseNativeBinding().mount(mp, fs, { fsname: `dfnode-test:${name}` }));
    return { mp, reader };
  }

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfnode-fuse-it-'));
    const lower = await layer('lower', LOWER);
    lowerReader = lower.reader;
    lowerMp = lower.mp;
    upperMp = (await layer('upper', UPPER)).mp;
    merged = join(dir, 'merged');
    await mkdir(merged);
    await exec('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${upperMp}:${lowerMp}`, merged]);
    overlayMounted = true;
  });

  afterAll(async () => {
    try {
      if (overlayMounted) await exec('umount', ['-l', merged]).catch(() => {});
      for (const m of mounts) await m.unmount().catch(() => lazyUnmount(m.mountpoint));
      for (const r of readers) await r.close();
    } finally {
      await cleanup?.();
    }
  });

  it('is a read-only fuse.dfb mount with our fsname', async () => {
    const m = readMountInfo().find((x) => x.mountpoint === lowerMp);
    expect(m?.fstype).toBe('fuse.dfb');
    expect(m?.source).toBe('dfnode-test:lower');
    expect(await mounts[0]!.check()).toBe(true);
  });

  it('stat shows TOC inode numbers; hard links share st_ino and nlink', async () => {
    const root = await stat(lowerMp);
    expect(root.ino).toBe(1);
    const a = await stat(join(lowerMp, 'bin/busybox'));
    const b = await stat(join(lowerMp, 'bin/ls'));
    expect(b.ino).toBe(a.ino);
    expect(a.nlink).toBe(2);
    expect(a.ino).toBe(lowerReader.toc.lookup('bin/busybox'));
    expect(a.mode).toBe(0o104755);
    expect(a.size).toBe(BIG.length);
  });

  it('mtime keeps milliseconds (fuse-native passes ms; the nanoseconds below are lost)', async () => {
    const s = await stat(join(lowerMp, 'etc/hostname'), { bigint: true });
    expect(s.mtimeNs).toBe(1_700_000_000_123_000_000n);
    expect(s.uid).toBe(1000n);
    expect(s.gid).toBe(1001n);
  });

  it('every entry type through lstat; readdir; readlink; readFile', async () => {
    expect((await lstat(join(lowerMp, 'bin/sh'))).isSymbolicLink()).toBe(true);
    expect(await readlink(join(lowerMp, 'bin/sh'))).toBe('busybox');
    const nul = await lstat(join(lowerMp, 'dev/null'));
    expect(nul.isCharacterDevice()).toBe(true);
    expect(nul.rdev).toBe(0x103);
    const sda = await lstat(join(lowerMp, 'dev/sda1'));
    expect(sda.isBlockDevice()).toBe(true);
    expect(sda.rdev).toBe(0x801);
    expect((await lstat(join(lowerMp, 'run/fifo'))).isFIFO()).toBe(true);
    expect(await readdir(join(lowerMp, 'etc'))).toEqual(['empty', 'gone', 'hostname']);
    const ents = await readdir(join(lowerMp, 'bin'), { withFileTypes: true });
    expect(ents.map((e) => [e.name, e.isFile(), e.isSymbolicLink()])).toEqual([
      ['busybox', true, false],
      ['ls', true, false],
      ['sh', false, true],
    ]);
    expect(await readFile(join(lowerMp, 'etc/hostname'), 'utf8')).toBe('lower\n');
    expect((await readFile(join(lowerMp, 'etc/empty'))).length).toBe(0);
    expect((await readFile(join(lowerMp, 'bin/busybox'))).equals(BIG)).toBe(true);
    expect((await readFile(join(lowerMp, 'bin/sh'))).equals(BIG)).toBe(true);
  });

  it('whiteouts are 0/0 character devices and opaque dirs carry trusted.overlay.opaque=y', async () => {
    const w = await lstat(join(upperMp, 'etc/gone'));
    expect(w.isCharacterDevice()).toBe(true);
    expect(w.rdev).toBe(0);
    const { stdout } = await exec('getfattr', [
      '--absolute-names',
      '-n',
      'trusted.overlay.opaque',
      '--only-values',
      join(upperMp, 'opq'),
    ]);
    expect(stdout).toBe('y');
  });

  it('xattrs through the kernel, binary and empty values', async () => {
    const { stdout } = await exec('getfattr', [
      '--absolute-names',
      '-d',
      '-m',
      '-',
      '-e',
      'hex',
      join(lowerMp, 'bin/busybox'),
    ]);
    expect(stdout).toContain('user.bin=0x00ff0080');
    expect(stdout).toMatch(/^user\.empty=0x$/m);
    const none = await exec('getfattr', [
      '--absolute-names',
      '-n',
      'user.nope',
      join(lowerMp, 'bin/busybox'),
    ]).catch((e: { stderr: string }) => e);
    expect((none as { stderr: string }).stderr).toMatch(/No such attribute/);
  });

  it('writes are refused with EROFS', async () => {
    const err = await readFile(join(lowerMp, 'etc/hostname'), { flag: 'r+' }).catch(
      (e: NodeJS.ErrnoException) => e,
    );
    expect((err as NodeJS.ErrnoException).code).toBe('EROFS');
    const e2 = await mkdir(join(lowerMp, 'newdir')).catch((e: NodeJS.ErrnoException) => e);
    expect((e2 as NodeJS.ErrnoException).code).toBe('EROFS');
  });

  it('a reader that rejects gives EIO to the process, and the mount keeps working', async () => {
    lowerReader.fail = new DfError('NETWORK', 'registry unreachable');
    try {
      const err = await readFile(join(lowerMp, 'fail/me')).catch((e: NodeJS.ErrnoException) => e);
      expect((err as NodeJS.ErrnoException).code).toBe('EIO');
    } finally {
      lowerReader.fail = undefined;
    }
    expect((await readFile(join(lowerMp, 'fail/me'))).length).toBe(50_000);
    expect(await mounts[0]!.check()).toBe(true);
  });

  it('a reader that hangs gives EIO after the read timeout, not a hang', async () => {
    lowerReader.fail = 'hang';
    try {
      const err = await readFile(join(lowerMp, 'opq/sub/old2')).catch((e: NodeJS.ErrnoException) => e);
      expect((err as NodeJS.ErrnoException).code).toBe('EIO');
    } finally {
      lowerReader.fail = undefined;
    }
  });

  it('overlayfs over two DFB layers: whiteouts hide, opaque dirs hide the lower contents', async () => {
    expect(await readdir(join(merged, 'etc'))).toEqual(['empty', 'hostname']);
    expect(await readFile(join(merged, 'etc/hostname'), 'utf8')).toBe('upper\n');
    await expect(stat(join(merged, 'etc/gone'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await readdir(join(merged, 'opq'))).toEqual(['new']);
    await expect(stat(join(merged, 'opq/old1'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await readFile(join(merged, 'bin/busybox'))).equals(BIG)).toBe(true);
    expect((await stat(join(merged, 'bin/ls'))).ino).toBe((await stat(join(merged, 'bin/busybox'))).ino);
  });

  it('a mount whose serving process died is found and cleaned up', async () => {
    // a child process mounts a layer and is killed with SIGKILL: the mount stays, answering ENOTCONN
    const mp = join(dir, 'mnt', 'killed');
    await mkdir(mp, { recursive: true });
    const script = `
      import { DfbFileReader } from ${JSON.stringify(new URL('../fuse/layer.ts', import.meta.url).pathname)};
      import { LayerFs } from ${JSON.stringify(new URL('../../src/fuse/layer-fs.ts', import.meta.url).pathname)};
      import { FuseNativeBinding } from ${JSON.stringify(new URL('../../src/fuse/fuse-native-binding.ts', import.meta.url).pathname)};
      const r = await DfbFileReader.open(${JSON.stringify(join(dir, 'lower.dfb'))});
      await new FuseNativeBinding().mount(${JSON.stringify(mp)}, new LayerFs({ toc: r.toc, reader: r }));
      process.stdout.write('mounted\\n');
      setInterval(() => {}, 1000);
    `;
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise<void>((res, rej) => {
        child.stdout.on('data', (d: Buffer) => d.toString().includes('mounted') && res());
        child.on('exit', (code) => rej(new Error(`mount child exited with ${code}`)));
      });
      expect(readMountInfo().some((m) => m.mountpoint === mp)).toBe(true);
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      await expect(stat(join(mp, 'etc'))).rejects.toMatchObject({ code: 'ENOTCONN' });
      const res = await cleanupStaleMounts(join(dir, 'mnt'));
      expect(res.find((r) => r.mountpoint === mp)).toMatchObject({ state: 'dead', unmounted: true });
      // the live mounts of this process are left alone
      expect(res.find((r) => r.mountpoint === lowerMp)).toMatchObject({ state: 'alive', unmounted: false });
      expect(readMountInfo().some((m) => m.mountpoint === mp)).toBe(false);
    } finally {
      child.kill('SIGKILL');
      await lazyUnmount(mp).catch(() => {});
    }
  });

  it('unmountAllOnExit: SIGTERM unmounts every mount of the process', async () => {
    const mp = join(dir, 'mnt', 'sigterm');
    await mkdir(mp, { recursive: true });
    const src = (rel: string) => JSON.stringify(new URL(rel, import.meta.url).pathname);
    const script = `
      import { DfbFileReader } from ${src('../fuse/layer.ts')};
      import { LayerFs } from ${src('../../src/fuse/layer-fs.ts')};
      import { FuseNativeBinding } from ${src('../../src/fuse/fuse-native-binding.ts')};
      import { unmountAllOnExit } from ${src('../../src/fuse/mounts.ts')};
      unmountAllOnExit();
      const r = await DfbFileReader.open(${JSON.stringify(join(dir, 'lower.dfb'))});
      await new FuseNativeBinding().mount(${JSON.stringify(mp)}, new LayerFs({ toc: r.toc, reader: r }));
      process.stdout.write('mounted\\n');
      setInterval(() => {}, 1000);
    `;
    const { spawn } = await import('node:child_process');
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      await new Promise<void>((res, rej) => {
        child.stdout.on('data', (d: Buffer) => d.toString().includes('mounted') && res());
        child.on('exit', (code) => rej(new Error(`mount child exited with ${code}`)));
      });
      expect(readMountInfo().some((m) => m.mountpoint === mp)).toBe(true);
      const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
      child.kill('SIGTERM');
      expect(await exited).toBe(143);
      expect(readMountInfo().some((m) => m.mountpoint === mp)).toBe(false);
    } finally {
      child.kill('SIGKILL');
      await lazyUnmount(mp).catch(() => {});
    }
  });
});
