/**
 * Faults under `dfnode mount` (debian, one large layer): a proxy in front of a real docker-registry that
 * corrupts block responses or goes down, and a cache directory on a 1 MiB tmpfs. Compiled CLI in child
 * processes, real FUSE and overlayfs mounts. Needs root, /dev/fuse, overlayfs, docker-registry, skopeo,
 * umoci, getfattr, debootstrap (fixture); skips locally with a printed reason, never in CI.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runOk } from '../helpers/cli.js';
import {
  alive,
  dfbLayers,
  nodeTempDir,
  pushAndConvert,
  requireNodeMounts,
  snapshotTree,
  startMount,
  status,
  umociUnpack,
  waitFor,
  type DfbManifestLayer,
  type ImageSet,
  type MountProcess,
  type NodeDirs,
  type TreeEntry,
} from '../helpers/node.js';
import { startRangeProxy, type RangeProxy } from '../helpers/range-proxy.js';
import { sha256File } from '../helpers/digest.js';
import { freePort } from '../helpers/registry.js';

const req = requireNodeMounts(['debootstrap']);
const NO_FILL = { DFNODE_FETCH_BACKGROUND_FILL: 'false' };
const SMALL = 'etc/debian_version';

/** The read's error, or undefined; rejects after `safetyMs` so that a hang fails the test instead of stalling it. */
async function readError(path: string, safetyMs = 60_000): Promise<NodeJS.ErrnoException | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`read of ${path} hung for ${safetyMs} ms`)), safetyMs);
  });
  try {
    return await Promise.race([
      readFile(path).then(
        () => undefined,
        (e: NodeJS.ErrnoException) => e,
      ),
      hang,
    ]);
  } finally {
    clearTimeout(timer);
  }
}

describe.skipIf(req.skip)('dfnode mount: corrupt blocks, registry down, disk full (debian)', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let proxy: RangeProxy;
  let layer: DfbManifestLayer;
  let ref: string;
  let rootfs: string;
  let want: Map<string, TreeEntry>;
  let files: string[];
  const procs: MountProcess[] = [];
  let n = 0;

  beforeAll(async () => {
    tmp = await nodeTempDir('faults-');
    images = await pushAndConvert(['debian'], tmp.dir);
    layer = (await dfbLayers(images.reg.url, images.dfb.debian!))[0]!;
    proxy = await startRangeProxy(images.reg.host);
    ref = images.dfb.debian!.replace(images.reg.host, proxy.host);
    const src = images.source.debian!;
    rootfs = await umociUnpack(src.dir, src.tag, join(tmp.dir, 'umoci'));
    want = await snapshotTree(rootfs);
    // large files, biggest first: each test reads ones no earlier read of its cache touched
    files = [...want]
      .filter(([, e]) => e.type === 'file' && e.size! > 1 << 20)
      .sort((a, b) => b[1].size! - a[1].size!)
      .map(([p]) => p);
    expect(files.length).toBeGreaterThan(3);
  });

  afterAll(async () => {
    for (const p of procs) await p.kill().catch(() => undefined);
    await proxy?.stop().catch(() => undefined);
    await images?.reg.stop().catch(() => undefined);
    await tmp?.cleanup();
  });

  function freshDirs(): NodeDirs {
    n++;
    return { cacheDir: join(tmp.dir, `cache-${n}`), stateDir: join(tmp.dir, `state-${n}`) };
  }
  async function mount(
    dirs: NodeDirs,
    opts: { args?: string[]; env?: NodeJS.ProcessEnv } = {},
  ): Promise<MountProcess> {
    const p = await startMount(ref, join(tmp.dir, `mnt-${n}`), dirs, opts);
    procs.push(p);
    return p;
  }
  const blobStatus = async (dirs: NodeDirs) =>
    (await status(dirs)).blobs.find((b) => b.digest === layer.digest);
  async function expectCompleteCache(dirs: NodeDirs): Promise<void> {
    await waitFor(
      'blob complete in dfnode status',
      async () => (await blobStatus(dirs))?.complete,
      300_000,
      500,
    );
    const data = join(dirs.cacheDir, 'blobs', 'sha256', layer.digest.slice(7), 'data');
    expect('sha256:' + (await sha256File(data))).toBe(layer.digest);
  }

  it('a corrupted block is rejected and refetched (reader gets correct data); always corrupt → EIO; counted', async () => {
    const dirs = freshDirs();
    const port = await freePort();
    const m = await mount(dirs, {
      env: NO_FILL,
      args: ['--metrics-address', `127.0.0.1:${port}`, '--read-timeout', '10000'],
    });
    try {
      // corrupt only the first response for the first block range requested after the mount
      let first: string | undefined;
      proxy.controls.corrupt = ({ range }) => {
        const key = `${range?.start}-${range?.end}`;
        first ??= key;
        return key === first && !proxy.log.some((e) => e.corrupted);
      };
      expect(await readFile(join(m.target, SMALL))).toEqual(await readFile(join(rootfs, SMALL)));
      const corrupted = proxy.log.filter((e) => e.corrupted);
      expect(corrupted.length).toBe(1);
      // the same range was asked for again and that answer was used
      const again = proxy.log.filter((e) => e.blob && `${e.range?.start}-${e.range?.end}` === first);
      expect(again.length).toBe(2);

      const metrics = await waitFor('verification failure in the metrics', async () => {
        const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        const v = /^dfnode_verification_failures_total\{[^}]*\} (\d+)/m.exec(text);
        return v && Number(v[1]) >= 1 ? text : undefined;
      });
      expect(metrics).toMatch(/dfnode_verification_failures_total/);
      await waitFor('verification failure in dfnode status', async () => {
        const r = (await status(dirs)).mounts.find((x) => x.pid === m.pid);
        return (r?.stats?.verifyFailures ?? 0) >= 1;
      });

      // a registry that always corrupts: the read fails with EIO within the read timeout. (Only the block
      // holding the flipped byte of each response is bad; the good blocks of a run may be cached, and the
      // digest check of the complete cache below proves that no bad one was.)
      proxy.controls.corrupt = () => true;
      const err = await readError(join(m.target, files[0]!));
      expect(err?.code).toBe('EIO');
      expect(alive(m.pid)).toBe(true);
      proxy.controls.corrupt = undefined;
    } finally {
      proxy.controls.corrupt = undefined;
      await m.stop();
    }
    // no corrupt block was kept: a mount with fill completes the cache and it matches the blob digest
    const m2 = await mount(dirs);
    expect(await sha256File(join(m2.target, files[0]!))).toBe(want.get(files[0]!)!.sha256);
    await expectCompleteCache(dirs);
    await m2.stop();
  });

  it('registry down: a read of an unfetched file fails with EIO (bounded by --read-timeout), the daemon stays up', async () => {
    const dirs = freshDirs();
    const m = await mount(dirs, { env: NO_FILL, args: ['--read-timeout', '3000'] });
    try {
      expect(await readFile(join(m.target, SMALL))).toEqual(await readFile(join(rootfs, SMALL)));
      proxy.controls.down = true;
      const err = await readError(join(m.target, files[1]!));
      expect(err?.code).toBe('EIO');
      expect(alive(m.pid)).toBe(true);
      // what is cached still reads; and once the registry is back, so does the rest
      expect(await readFile(join(m.target, SMALL))).toEqual(await readFile(join(rootfs, SMALL)));
      proxy.controls.down = false;
      expect(await sha256File(join(m.target, files[1]!))).toBe(want.get(files[1]!)!.sha256);
    } finally {
      proxy.controls.down = false;
      await m.stop();
    }
  });

  it('disk full (cache on a 1 MiB tmpfs): the reader still gets the verified bytes, daemon stays up; with space the cache completes uncorrupted', async () => {
    const dirs = freshDirs();
    await mkdir(dirs.cacheDir, { recursive: true });
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dirs.cacheDir]);
    const m = await mount(dirs, { args: ['--read-timeout', '10000'] });
    try {
      // the blocks do not fit in the cache: they go to the reader without it
      expect(await sha256File(join(m.target, files[2]!))).toBe(want.get(files[2]!)!.sha256);
      expect(alive(m.pid)).toBe(true);
      expect((await readdirOk(m.target)).length).toBeGreaterThan(0);
    } finally {
      await m.stop();
    }
    await runOk('mount', ['-o', 'remount,size=512m', dirs.cacheDir]);
    const m2 = await mount(dirs);
    expect(await sha256File(join(m2.target, files[2]!))).toBe(want.get(files[2]!)!.sha256);
    await expectCompleteCache(dirs);
    await m2.stop();
  });
});

async function readdirOk(p: string): Promise<string[]> {
  const { readdir } = await import('node:fs/promises');
  return readdir(p);
}
