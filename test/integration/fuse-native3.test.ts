// NativeFuseBinding (native/dfnode_fuse, libfuse3) with real kernel mounts: layers converted from tars and
// stacked under overlayfs, a hanging reader, a killed serving process, SIGTERM, and a side-by-side sequential
// read of a large cached file through this binding and through FuseNativeBinding (printed, not asserted:
// bench/fuse-read is the benchmark). Needs root, /dev/fuse, overlayfs, getfattr; builds the addon if needed.
import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { convertLayer } from '../../converter/convert-layer.js';
import { bufferStream } from '../../converter/store-oci.js';
import { FuseNativeBinding } from '../../src/fuse/fuse-native-binding.js';
import { LayerFs } from '../../src/fuse/layer-fs.js';
import { cleanupStaleMounts, lazyUnmount, readMountInfo } from '../../src/fuse/mounts.js';
import { NativeFuseBinding } from '../../src/fuse/native-binding.js';
import type { FuseBinding, FuseMount } from '../../src/fuse/types.js';
import { buildTar, sha256, type TarEntry } from '../fixtures/tar-builder.js';
import { hasTool } from '../helpers/require.js';
import { DfbFileReader, bigContent } from '../fuse/layer.js';
import { requireNativeMounts } from '../helpers/native.js';
import { tempDir } from '../helpers/temp.js';
import { sha256Hex } from '../helpers/digest.js';

const exec = promisify(execFile);

const req = requireNativeMounts({
  'root (FUSE and overlay mounts)': process.getuid?.() === 0,
  'overlay filesystem':
    existsSync('/proc/filesystems') && readFileSync('/proc/filesystems', 'utf8').includes('overlay'),
  'getfattr in PATH (apt-get install attr)': hasTool('getfattr'),
});

const BIG = bigContent(1_000_000);
const LARGE = bigContent(64 << 20);
const MTIME = { sec: 1_700_000_000, nsec: 123_456_789 };

const LOWER: TarEntry[] = [
  { path: 'bin/', type: 'directory', mtime: MTIME },
  { path: 'bin/busybox', type: 'file', mode: 0o4755, data: BIG, mtime: MTIME, xattrs: { 'user.bin': 'x' } },
  { path: 'bin/ls', type: 'link', linkname: 'bin/busybox' },
  { path: 'bin/sh', type: 'symlink', linkname: 'busybox', mtime: MTIME },
  { path: 'etc/', type: 'directory', mode: 0o755 },
  { path: 'etc/hostname', type: 'file', data: 'lower\n', mtime: MTIME },
  { path: 'etc/gone', type: 'file', data: 'deleted by the upper layer\n' },
  { path: 'opq/', type: 'directory' },
  { path: 'opq/old1', type: 'file', data: 'hidden\n' },
  { path: 'slow/', type: 'directory' },
  { path: 'slow/file', type: 'file', data: bigContent(40_000) },
];

const UPPER: TarEntry[] = [
  { path: 'etc/', type: 'directory', mode: 0o755 },
  { path: 'etc/.wh.gone', type: 'file', data: '' },
  { path: 'etc/hostname', type: 'file', data: 'upper\n', mtime: MTIME },
  { path: 'opq/', type: 'directory' },
  { path: 'opq/.wh..wh..opq', type: 'file', data: '' },
  { path: 'opq/new', type: 'file', data: 'new\n' },
];

const LARGE_LAYER: TarEntry[] = [{ path: 'large', type: 'file', data: LARGE }];

function dropCaches(): void {
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3');
  } catch {
    // not allowed here (container): the first read of each mount is cold anyway
  }
}

describe.skipIf(req.skip)('NativeFuseBinding: kernel mounts of converted layers', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const readers: DfbFileReader[] = [];
  const mounts: FuseMount[] = [];
  let lowerReader: DfbFileReader;
  let lowerMp: string;
  let merged: string;
  let overlayMounted = false;

  async function convert(name: string, entries: TarEntry[]): Promise<string> {
    const tar = buildTar(entries);
    const out = join(dir, `${name}.dfb`);
    await convertLayer(
      bufferStream(tar),
      { mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha256(tar), size: tar.length },
      out,
      { blockSize: 64 * 1024, workers: 1, tmpDir: dir },
    );
    return out;
  }

  async function mountLayer(
    binding: FuseBinding,
    blob: string,
    name: string,
  ): Promise<{ mp: string; reader: DfbFileReader; m: FuseMount }> {
    const reader = await DfbFileReader.open(blob);
    readers.push(reader);
    const mp = join(dir, 'mnt', name);
    await mkdir(mp, { recursive: true });
    const fs = new LayerFs({ toc: reader.toc, reader, readTimeoutMs: 2000 });
    const m = await binding.mount(mp, fs, { fsname: `dfnode-n3:${name}` });
    mounts.push(m);
    return { mp, reader, m };
  }

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfnode-native3-'));
    const native = new NativeFuseBinding();
    const lower = await mountLayer(native, await convert('lower', LOWER), 'lower');
    lowerReader = lower.reader;
    lowerMp = lower.mp;
    const upperMp = (await mountLayer(native, await convert('upper', UPPER), 'upper')).mp;
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

  it('overlayfs over two native mounts: whiteouts, opaque dirs, hard links, ns mtimes', async () => {
    expect(await readdir(join(merged, 'etc'))).toEqual(['hostname']);
    expect(await readFile(join(merged, 'etc/hostname'), 'utf8')).toBe('upper\n');
    await expect(stat(join(merged, 'etc/gone'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await readdir(join(merged, 'opq'))).toEqual(['new']);
    expect((await readFile(join(merged, 'bin/busybox'))).equals(BIG)).toBe(true);
    expect((await stat(join(merged, 'bin/ls'))).ino).toBe((await stat(join(merged, 'bin/busybox'))).ino);
    expect((await stat(join(merged, 'etc/hostname'), { bigint: true })).mtimeNs).toBe(
      1_700_000_000_123_456_789n,
    );
    // `find` + stat over the merged tree (readdirplus underneath)
    const { stdout } = await exec('find', [merged, '-printf', '%i %y %p\n']);
    expect(stdout).toContain(`${merged}/bin/sh`);
  });

  it('a reader that hangs gives EIO after the read timeout, and the mount keeps serving', async () => {
    lowerReader.fail = 'hang';
    try {
      await expect(readFile(join(lowerMp, 'slow/file'))).rejects.toMatchObject({ code: 'EIO' });
    } finally {
      lowerReader.fail = undefined;
    }
    expect((await readFile(join(lowerMp, 'slow/file'))).length).toBe(40_000);
  });

  async function child(mp: string, withExitHandler: boolean) {
    const src = (rel: string) => JSON.stringify(new URL(rel, import.meta.url).pathname);
    const script = `
      import { DfbFileReader } from ${src('../fuse/layer.ts')};
      import { LayerFs } from ${src('../../src/fuse/layer-fs.ts')};
      import { NativeFuseBinding } from ${src('../../src/fuse/native-binding.ts')};
      import { unmountAllOnExit } from ${src('../../src/fuse/mounts.ts')};
      if (${withExitHandler}) unmountAllOnExit();
      const r = await DfbFileReader.open(${JSON.stringify(join(dir, 'lower.dfb'))});
      await new NativeFuseBinding().mount(${JSON.stringify(mp)}, new LayerFs({ toc: r.toc, reader: r }));
      process.stdout.write('mounted\\n');
      setInterval(() => {}, 1000);
    `;
    const c = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    await new Promise<void>((res, rej) => {
      c.stdout.on('data', (d: Buffer) => d.toString().includes('mounted') && res());
      c.on('exit', (code) => rej(new Error(`mount child exited with ${code}`)));
    });
    return c;
  }

  it('a mount whose serving process was killed is found dead and cleaned up', async () => {
    const mp = join(dir, 'mnt', 'killed');
    await mkdir(mp, { recursive: true });
    const c = await child(mp, false);
    try {
      expect(await readFile(join(mp, 'etc/hostname'), 'utf8')).toBe('lower\n');
      c.kill('SIGKILL');
      await new Promise((r) => c.once('exit', r));
      // (attributes the kernel cached before the kill are still served; a new lookup and statfs are not)
      await expect(stat(join(mp, 'bin'))).rejects.toMatchObject({ code: 'ENOTCONN' });
      await expect(exec('stat', ['-f', mp])).rejects.toMatchObject({
        stderr: expect.stringMatching(/not connected/i),
      });
      const res = await cleanupStaleMounts(join(dir, 'mnt'));
      expect(res.find((r) => r.mountpoint === mp)).toMatchObject({ state: 'dead', unmounted: true });
      expect(res.find((r) => r.mountpoint === lowerMp)).toMatchObject({ state: 'alive', unmounted: false });
    } finally {
      c.kill('SIGKILL');
      await lazyUnmount(mp).catch(() => {});
    }
  });

  it('SIGTERM with unmountAllOnExit unmounts and exits 143', async () => {
    const mp = join(dir, 'mnt', 'sigterm');
    await mkdir(mp, { recursive: true });
    const c = await child(mp, true);
    try {
      const exited = new Promise<number | null>((r) => c.once('exit', (code) => r(code)));
      c.kill('SIGTERM');
      expect(await exited).toBe(143);
      expect(readMountInfo().some((m) => m.mountpoint === mp)).toBe(false);
    } finally {
      c.kill('SIGKILL');
      await lazyUnmount(mp).catch(() => {});
    }
  });

  it('sequential read of a 64 MiB cached file: native vs fuse-native (printed)', async () => {
    const blob = await convert('large', LARGE_LAYER);
    const want = sha256Hex(LARGE);
    const rows: string[] = [];
    for (const [name, binding] of [
      ['native (libfuse3)', new NativeFuseBinding()],
      ['fuse-native (libfuse2)', new FuseNativeBinding()],
    ] as const) {
      const { mp, m } = await mountLayer(binding, blob, `large-${name.split(' ')[0]}`);
      const file = join(mp, 'large');
      // warm the DFB file in the host page cache (the "fully cached layer" case), then a cold FUSE read
      await exec('cat', [blob], { maxBuffer: 1 << 30, encoding: 'buffer' });
      dropCaches();
      await exec('cat', [blob], { maxBuffer: 1 << 30, encoding: 'buffer' });
      const t0 = process.hrtime.bigint();
      await exec('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M']);
      const sec = Number(process.hrtime.bigint() - t0) / 1e9;
      const t1 = process.hrtime.bigint();
      await exec('dd', [`if=${file}`, 'of=/dev/null', 'bs=1M']);
      const hot = Number(process.hrtime.bigint() - t1) / 1e9;
      const { stdout } = await exec('sha256sum', [file]);
      expect(stdout.split(' ')[0]).toBe(want);
      const maxRead =
        'info' in m ? ` max request ${(m as { info(): { maxRead: number } }).info().maxRead / 1024} KiB` : '';
      rows.push(
        `${name.padEnd(24)} first read ${(LARGE.length / 2 ** 20 / sec).toFixed(0).padStart(5)} MB/s` +
          `  page-cache read ${(LARGE.length / 2 ** 20 / hot).toFixed(0).padStart(5)} MB/s${maxRead}`,
      );
      await m.unmount();
    }
    console.log(
      `sequential read, 64 MiB file (dd bs=1M, FUSE read then page-cache read):\n${rows.join('\n')}`,
    );
  });
});
