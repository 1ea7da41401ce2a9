/**
 * Laziness and crash safety of `dfnode mount` on the converted Debian minbase image (one large layer), through
 * a counting proxy in front of a real docker-registry, with the compiled CLI in child processes.
 * Needs root, /dev/fuse, overlayfs, docker-registry, skopeo, umoci, getfattr, debootstrap (fixture); skips
 * locally with a printed reason, never in CI.
 */
import { createReadStream } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dfbLayers,
  mountsUnder,
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

const req = requireNodeMounts(['debootstrap']);
/** Mount without background fill: reads fetch exactly what they need. */
const NO_FILL = { DFNODE_FETCH_BACKGROUND_FILL: 'false' };
const SMALL = 'etc/debian_version';

describe.skipIf(req.skip)('dfnode mount: lazy reads, background fill, crash safety (debian)', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let proxy: RangeProxy;
  let layer: DfbManifestLayer;
  let ref: string;
  let rootfs: string;
  let want: Map<string, TreeEntry>;
  let big: string;
  const procs: MountProcess[] = [];
  let n = 0;

  beforeAll(async () => {
    tmp = await nodeTempDir('lazy-');
    images = await pushAndConvert(['debian'], tmp.dir);
    const layers = await dfbLayers(images.reg.url, images.dfb.debian!);
    expect(layers.length).toBe(1);
    layer = layers[0]!;
    proxy = await startRangeProxy(images.reg.host);
    ref = images.dfb.debian!.replace(images.reg.host, proxy.host);
    const src = images.source.debian!;
    rootfs = await umociUnpack(src.dir, src.tag, join(tmp.dir, 'umoci'));
    want = await snapshotTree(rootfs);
    big = [...want].filter(([, e]) => e.type === 'file').sort((a, b) => b[1].size! - a[1].size!)[0]![0];
    expect(want.get(big)!.size).toBeGreaterThan(2 << 20);
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

  const dataFile = (dirs: NodeDirs) => join(dirs.cacheDir, 'blobs', 'sha256', layer.digest.slice(7), 'data');
  const blobStatus = async (dirs: NodeDirs) =>
    (await status(dirs)).blobs.find((b) => b.digest === layer.digest);

  /** Waits until `dfnode status` shows the blob complete, then checks the cache file against the blob digest. */
  async function expectCompleteCache(dirs: NodeDirs): Promise<void> {
    await waitFor(
      'blob complete in dfnode status',
      async () => (await blobStatus(dirs))?.complete,
      300_000,
      500,
    );
    expect('sha256:' + (await sha256File(dataFile(dirs)))).toBe(layer.digest);
  }

  it('reading one small file fetches footer + TOC and a block or two; fill then completes the cache', async () => {
    const dirs = freshDirs();
    const m = await mount(dirs, { env: NO_FILL });
    // mounting fetched the footer and the TOC only, in one range read (the toc.offset annotation)
    const atMount = { requests: proxy.blobRequests(layer.digest), bytes: proxy.blobBytes(layer.digest) };
    expect(atMount.requests).toBe(1);
    expect(atMount.bytes).toBeLessThan(layer.size / 10);

    expect(await readFile(join(m.target, SMALL))).toEqual(await readFile(join(rootfs, SMALL)));
    const reqs = proxy.blobRequests(layer.digest) - atMount.requests;
    const bytes = proxy.blobBytes(layer.digest) - atMount.bytes;
    // one block (adjacent blocks would be one request); a 64 KiB block is at most ~64 KiB stored
    expect(reqs).toBeGreaterThanOrEqual(1);
    expect(reqs).toBeLessThanOrEqual(2);
    expect(bytes).toBeLessThanOrEqual(2 * 66 * 1024);
    expect(bytes).toBeLessThan(layer.size / 100);
    const blob = await blobStatus(dirs);
    expect(blob!.complete).toBe(false);
    await m.stop();

    // a new mount with background fill (default, unlimited): the TOC comes from the cache, the fill the rest
    const before = proxy.blobBytes(layer.digest);
    const m2 = await mount(dirs);
    expect(proxy.blobBytes(layer.digest)).toBe(before);
    expect(await readFile(join(m2.target, SMALL))).toEqual(await readFile(join(rootfs, SMALL)));
    await expectCompleteCache(dirs);
    // every byte of the blob came from the registry once: nothing was fetched twice
    expect(proxy.blobBytes(layer.digest)).toBe(layer.size);
    await m2.stop();
  });

  it('SIGKILL during background fill: restart cleans the dead mount, resumes, refetches no verified block', async () => {
    const dirs = freshDirs();
    const base = proxy.blobBytes(layer.digest);
    const m = await mount(dirs, { args: ['--fill-rate', '4M'] });
    await readFile(join(m.target, SMALL));
    // wait until a good part is persisted (status reads the persisted bitmap), but not all
    const st = await waitFor(
      'some fill progress',
      async () => {
        const b = await blobStatus(dirs);
        return b && b.filledBytes > layer.size / 5 ? b : undefined;
      },
      300_000,
      200,
    );
    expect(st.complete).toBe(false);
    await m.kill();
    await proxy.idle(); // what the dead process had asked for is counted before the restart
    const killedAt = proxy.blobBytes(layer.digest);
    // the dead process left its mounts behind: the layer mounts answer ENOTCONN (readdir: the root's
    // attributes may still be cached by the kernel)
    const left = await mountsUnder(dirs.stateDir);
    expect(left.length).toBeGreaterThan(0);
    await expect(readdir(left[0]!.mountpoint)).rejects.toMatchObject({ code: 'ENOTCONN' });

    const m2 = await mount(dirs);
    // the dead mounts are gone; what is mounted now is served
    const now = await mountsUnder(dirs.stateDir);
    expect(now.map((x) => x.mountpoint)).not.toContain(left[0]!.mountpoint);
    for (const x of now) await readdir(x.mountpoint);
    expect((await mountsUnder(m2.target)).length).toBe(1);
    expect((await status(dirs)).mounts.map((r) => r.pid)).toEqual([m2.pid]);

    await readFile(join(m2.target, SMALL));
    await expectCompleteCache(dirs);
    const after = proxy.blobBytes(layer.digest) - killedAt;
    // blocks verified and persisted before the kill are not fetched again
    expect(after).toBeLessThanOrEqual(layer.size - st.filledBytes);
    expect(killedAt - base + after).toBeLessThan(layer.size * 2);
    // and what the mount serves is right
    const got = await sha256File(join(m2.target, big));
    expect(got).toBe(want.get(big)!.sha256);
    await m2.stop();
  });

  it('SIGKILL during a read: the reader gets an error, the restarted mount serves correct data', async () => {
    const dirs = freshDirs();
    // no read-ahead either: its windows would finish the file before the kill
    const m = await mount(dirs, { env: { ...NO_FILL, DFNODE_FETCH_READ_AHEAD: 'false' } });
    proxy.controls.delayMs = 150;
    let readBytes = 0;
    const reading = new Promise<NodeJS.ErrnoException | undefined>((res) => {
      createReadStream(join(m.target, big), { highWaterMark: 64 * 1024 })
        .on('data', (d) => (readBytes += d.length))
        .on('error', (e: NodeJS.ErrnoException) => res(e))
        .on('end', () => res(undefined));
    });
    try {
      await waitFor('the read to be under way', async () => readBytes > 256 * 1024, 120_000, 20);
      const persisted = (await blobStatus(dirs))?.filledBytes ?? 0;
      await m.kill();
      const err = await reading;
      expect(err?.code).toMatch(/^(ENOTCONN|EIO|ECONNABORTED)$/);
      expect(readBytes).toBeLessThan(want.get(big)!.size!);
      proxy.controls.delayMs = 0;
      // requests the dead process left delayed in the proxy are dropped, not forwarded, and counted first
      await proxy.idle();
      const killedAt = proxy.blobBytes(layer.digest);

      const m2 = await mount(dirs);
      expect(await sha256File(join(m2.target, big))).toBe(want.get(big)!.sha256);
      await expectCompleteCache(dirs);
      expect(proxy.blobBytes(layer.digest) - killedAt).toBeLessThanOrEqual(layer.size - persisted);
      // the whole tree reads back exactly as umoci unpacked it (bytes of every file)
      const got = await snapshotTree(m2.target);
      for (const [p, e] of want) if (e.type === 'file') expect(got.get(p)?.sha256, p).toBe(e.sha256);
      await m2.stop();
    } finally {
      proxy.controls.delayMs = 0;
    }
  });
});
