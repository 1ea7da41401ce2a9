/**
 * Read-ahead (fetch/read-ahead.ts) through a real `dfnode mount` (kernel FUSE, native binding) of the
 * converted Debian image, behind a counting range proxy: a file read front to back takes few, large range
 * requests; a random pattern gets no read-ahead; closing the file mid-way cancels what is in flight.
 * Background fill is off so that every request comes from reads. Needs what node-lazy.test.ts needs.
 */
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sha256File } from '../helpers/digest.js';
import {
  dfbLayers,
  nodeTempDir,
  pushAndConvert,
  requireNodeMounts,
  snapshotTree,
  startMount,
  umociUnpack,
  waitFor,
  type DfbManifestLayer,
  type ImageSet,
  type MountProcess,
  type NodeDirs,
  type TreeEntry,
} from '../helpers/node.js';
import { startRangeProxy, type RangeProxy } from '../helpers/range-proxy.js';

const req = requireNodeMounts(['debootstrap']);
const NO_FILL = { DFNODE_FETCH_BACKGROUND_FILL: 'false' };
const OFF = { ...NO_FILL, DFNODE_FETCH_READ_AHEAD: 'false' };
const BLOCK = 64 * 1024;

describe.skipIf(req.skip)('dfnode mount: read-ahead (debian)', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let proxy: RangeProxy;
  let layer: DfbManifestLayer;
  let ref: string;
  let big: [string, TreeEntry];
  const procs: MountProcess[] = [];
  let n = 0;

  beforeAll(async () => {
    tmp = await nodeTempDir('readahead-');
    images = await pushAndConvert(['debian'], tmp.dir);
    layer = (await dfbLayers(images.reg.url, images.dfb.debian!))[0]!;
    proxy = await startRangeProxy(images.reg.host);
    ref = images.dfb.debian!.replace(images.reg.host, proxy.host);
    const src = images.source.debian!;
    const want = await snapshotTree(await umociUnpack(src.dir, src.tag, join(tmp.dir, 'umoci')));
    big = [...want].filter(([, e]) => e.type === 'file').sort((a, b) => b[1].size! - a[1].size!)[0]!;
    expect(big[1].size).toBeGreaterThan(2 << 20);
  });

  afterAll(async () => {
    for (const p of procs) await p.kill().catch(() => undefined);
    await proxy?.stop().catch(() => undefined);
    await images?.reg.stop().catch(() => undefined);
    await tmp?.cleanup();
  });

  async function mount(env: NodeJS.ProcessEnv): Promise<MountProcess> {
    n++;
    const dirs: NodeDirs = { cacheDir: join(tmp.dir, `cache-${n}`), stateDir: join(tmp.dir, `state-${n}`) };
    const p = await startMount(ref, join(tmp.dir, `mnt-${n}`), dirs, { env });
    procs.push(p);
    return p;
  }

  /** The blob's range requests made while `fn` runs. */
  async function requestsDuring(
    fn: () => Promise<void>,
  ): Promise<{ count: number; bytes: number; max: number }> {
    const from = proxy.log.length;
    await fn();
    const rs = proxy.log.slice(from).filter((e) => e.blob === layer.digest && e.range);
    return {
      count: rs.length,
      bytes: rs.reduce((a, e) => a + e.bytes, 0),
      max: Math.max(0, ...rs.map((e) => e.range!.end - e.range!.start + 1)),
    };
  }

  it('a file read front to back takes far fewer, larger range requests than blocks', async () => {
    const size = big[1].size!;
    const blocks = Math.ceil(size / BLOCK);
    const on = await mount(NO_FILL);
    const withRa = await requestsDuring(async () => {
      expect(await sha256File(join(on.target, big[0]))).toBe(big[1].sha256);
    });
    await on.stop();
    const off = await mount(OFF);
    const without = await requestsDuring(async () => {
      expect(await sha256File(join(off.target, big[0]))).toBe(big[1].sha256);
    });
    await off.stop();
    // without read-ahead: a request per kernel read (128 KiB or so); with it: windows growing to 4 MiB
    expect(withRa.count).toBeLessThan(blocks / 4);
    expect(withRa.count).toBeLessThan(without.count / 2);
    expect(withRa.max).toBeGreaterThan(4 * without.max);
    // the same bytes: read-ahead fetched nothing the reader did not read
    expect(withRa.bytes).toBe(without.bytes);
  });

  it('a random read pattern gets no read-ahead', async () => {
    const size = big[1].size!;
    // 12 reads of 4 KiB, far apart and out of order
    const offsets = Array.from({ length: 12 }, (_, i) => Math.floor(((i * 7) % 12) * (size / 12)));
    const pattern = (m: MountProcess) => async () => {
      const fh = await open(join(m.target, big[0]), 'r');
      try {
        for (const off of offsets) await fh.read(Buffer.alloc(4096), 0, 4096, off);
      } finally {
        await fh.close();
      }
    };
    const on = await mount(NO_FILL);
    const withRa = await requestsDuring(pattern(on));
    await on.stop();
    const off = await mount(OFF);
    const without = await requestsDuring(pattern(off));
    await off.stop();
    // the same requests as without read-ahead (a window would add at least 256 KiB)
    expect(withRa.count).toBe(without.count);
    expect(withRa.bytes).toBeLessThan(without.bytes + 256 * 1024);
  });

  it('closing the file mid-way cancels the read-ahead in flight; no fetch starts after', async () => {
    const m = await mount(NO_FILL);
    proxy.controls.delayMs = 400;
    const from = proxy.log.length;
    let atClose = 0;
    try {
      const fh = await open(join(m.target, big[0]), 'r');
      const buf = Buffer.alloc(128 * 1024);
      for (let off = 0; off < 768 * 1024; off += buf.length) await fh.read(buf, 0, buf.length, off);
      await fh.close();
      // the kernel sends FUSE_RELEASE after close() returns, and a request the daemon sent just before it
      // handled the release may still be on its way: count from a moment later, well inside the proxy's
      // 400 ms delay, so that a run started when an in-flight one is answered would still be counted
      await new Promise((r) => setTimeout(r, 150));
      atClose = proxy.log.length;
      // the aborted requests show up as cut answers once the proxy's delay is over
      await waitFor(
        'a cancelled read-ahead request',
        async () => proxy.log.slice(from).some((e) => e.blob === layer.digest && e.aborted),
        30_000,
        50,
      );
    } finally {
      proxy.controls.delayMs = 0;
    }
    await new Promise((r) => setTimeout(r, 1500));
    // nothing was asked for after the release (queued runs were dropped, not started)
    expect(proxy.log.length).toBe(atClose);
    await m.stop();
  });
});
