/**
 * Mount-time prefetch through the real path: the Debian image converted with `dfconvert --prefetch-list`, in a
 * real docker-registry behind a counting proxy, mounted by the compiled `dfnode mount` over kernel FUSE. The
 * proxy shows the prefetch ranges fetched right after the TOC, in runs; an on-demand read asked for during the
 * prefetch goes before its later runs; stopping the mount mid-prefetch ends cleanly; a blob converted without
 * a list (format 1.0) mounts with the footer and TOC only, as before.
 * Needs root, /dev/fuse, docker-registry, skopeo, umoci, debootstrap (fixture); skips locally with a reason.
 */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatPrefetchList } from '../../src/blob/prefetch-list.js';
import { DfbReader } from '../../src/blob/reader.js';
import { BufferRangeReader } from '../blob/util.js';
import { runCli } from '../helpers/cli.js';
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
} from '../helpers/node.js';
import { startRangeProxy, type RangeProxy } from '../helpers/range-proxy.js';
import { gate } from '../fetch/helpers.js';

const req = requireNodeMounts(['debootstrap']);
/** No background fill (reads and prefetch only), and 256 KiB runs so that the prefetch takes several. */
const RUN = 256 * 1024;
const ENV = { DFNODE_FETCH_BACKGROUND_FILL: 'false', DFNODE_FETCH_MAX_RUN_BYTES: String(RUN) };
const SMALL = 'etc/debian_version';

describe.skipIf(req.skip)('dfnode mount: prefetch of the TOC prefetch ranges (debian)', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let proxy: RangeProxy;
  let layer: DfbManifestLayer;
  let plainLayer: DfbManifestLayer;
  let rootfs: string;
  /** Blob bytes [start, end) of the blocks under the prefetch ranges. */
  let span: { start: number; end: number };
  const procs: MountProcess[] = [];
  let n = 0;

  beforeAll(async () => {
    tmp = await nodeTempDir('prefetch-');
    images = await pushAndConvert(['debian'], tmp.dir);
    const src = images.source.debian!;
    rootfs = await umociUnpack(src.dir, src.tag, join(tmp.dir, 'umoci'));
    const tree = await snapshotTree(rootfs);
    // the largest files, about 6 MiB of them, as if a workload had read them first
    const files = [...tree].filter(([, e]) => e.type === 'file').sort((a, b) => b[1].size! - a[1].size!);
    const list: { path: string }[] = [];
    for (let sum = 0, i = 0; sum < 6 << 20 && i < files.length; i++) {
      list.push({ path: '/' + files[i]![0] });
      sum += files[i]![1].size!;
    }
    expect(list.some((e) => e.path === '/' + SMALL)).toBe(false);
    const listFile = join(tmp.dir, 'list.jsonl');
    await writeFile(listFile, formatPrefetchList(list));
    const host = images.reg.host;
    const r = await runCli('dfconvert', [
      '--plain-http',
      '--quiet',
      '--work-dir',
      join(tmp.dir, 'dfwork'),
      '--prefetch-list',
      listFile,
      `${host}/debian:1`,
      `${host}/debian:pf`,
    ]);
    if (r.code !== 0) throw new Error(`dfconvert --prefetch-list failed (${r.code}): ${r.stderr}`);
    layer = (await dfbLayers(images.reg.url, `${host}/debian:pf`))[0]!;
    plainLayer = (await dfbLayers(images.reg.url, images.dfb.debian!))[0]!;
    expect(layer.digest).not.toBe(plainLayer.digest);
    const res = await fetch(`${images.reg.url}/v2/debian/blobs/${layer.digest}`);
    const toc = (await DfbReader.open(new BufferRangeReader(Buffer.from(await res.arrayBuffer())))).toc;
    const ranges = toc.prefetchRanges;
    expect(ranges.length).toBeGreaterThan(0);
    const first = toc.blocksForRange(ranges[0]!.offset, ranges[0]!.length)[0];
    const lastR = ranges[ranges.length - 1]!;
    const last = toc.blocksForRange(lastR.offset, lastR.length)[1];
    span = { start: toc.blockOffset(first), end: toc.blockOffset(last + 1) };
    expect(span.end - span.start).toBeGreaterThan(3 * RUN); // several runs
    proxy = await startRangeProxy(host);
  });

  afterAll(async () => {
    for (const p of procs) await p.kill().catch(() => undefined);
    await proxy?.stop().catch(() => undefined);
    await images?.reg.stop().catch(() => undefined);
    await tmp?.cleanup();
  });

  async function mount(tag: string): Promise<MountProcess> {
    n++;
    const dirs: NodeDirs = { cacheDir: join(tmp.dir, `cache-${n}`), stateDir: join(tmp.dir, `state-${n}`) };
    const ref = `${proxy.host}/debian:${tag}`;
    const p = await startMount(ref, join(tmp.dir, `mnt-${n}`), dirs, { env: ENV });
    procs.push(p);
    return p;
  }

  /** Blob GETs of `digest` after the first `skip`. */
  const dataRequests = (digest: string, skip: number) =>
    proxy.log.filter((e) => e.blob === digest).slice(skip);
  /**
   * From now on, holds every blob GET of `digest` after the next one (footer and TOC of a fresh mount, one
   * range read from the toc.offset annotation) until the gate opens; `skip` is the number of its GETs before
   * the first held one.
   */
  function holdData(digest: string): { open: () => void; skip: number } {
    const g = gate();
    const skip = proxy.blobRequests(digest) + 1;
    proxy.controls.hold = ({ blob }) =>
      blob === digest && proxy.blobRequests(digest) > skip ? g.promise : undefined;
    return {
      skip,
      open: () => {
        proxy.controls.hold = undefined;
        g.open();
      },
    };
  }

  it('fetches the prefetch ranges first, in runs, and lets a read asked for meanwhile go before the rest', async () => {
    const held = holdData(layer.digest);
    const m = await mount('pf');
    try {
      // right after the TOC: two prefetch runs (the prefetch keeps two in flight), from the start of the span
      await waitFor(
        'two prefetch runs',
        async () => dataRequests(layer.digest, held.skip).length >= 2,
        60_000,
        50,
      );
      const read = readFile(join(m.target, SMALL));
      await waitFor(
        'the on-demand read',
        async () => dataRequests(layer.digest, held.skip).length >= 3,
        60_000,
        50,
      );
      held.open();
      expect(await read).toEqual(await readFile(join(rootfs, SMALL)));
      const inSpan = (e: { range?: { start: number } }) => e.range!.start < span.end;
      const prefetched = () =>
        dataRequests(layer.digest, held.skip)
          .filter(inSpan)
          .reduce((a, e) => a + e.range!.end + 1 - e.range!.start, 0);
      await waitFor(
        'the whole prefetch span',
        async () => prefetched() >= span.end - span.start,
        120_000,
        100,
      );
      const data = dataRequests(layer.digest, held.skip);
      const kinds = data.map((e) => (inSpan(e) ? 'P' : 'B')).join('');
      expect(kinds).toMatch(/^PPBP+$/);
      expect(data[0]!.range!.start).toBe(span.start);
      expect(prefetched()).toBe(span.end - span.start); // each block once
      for (const e of data.filter(inSpan)) expect(e.range!.end + 1 - e.range!.start).toBeLessThanOrEqual(RUN);
      expect((await m.stop()).code).toBe(0);
    } finally {
      held.open();
    }
  });

  it('stops cleanly when unmounted in the middle of the prefetch', async () => {
    const held = holdData(layer.digest);
    try {
      const m = await mount('pf');
      await waitFor(
        'two prefetch runs',
        async () => dataRequests(layer.digest, held.skip).length >= 2,
        60_000,
        50,
      );
      const r = await m.stop();
      expect(r.code, m.stderr()).toBe(0);
    } finally {
      held.open();
    }
  });

  it('mounts a blob converted without a list (format 1.0) with the footer and TOC only, and reads it', async () => {
    const before = proxy.blobRequests(plainLayer.digest);
    const m = await mount('1-dfb');
    expect(proxy.blobRequests(plainLayer.digest) - before).toBe(1); // footer and TOC in one range read
    expect(await readFile(join(m.target, SMALL))).toEqual(await readFile(join(rootfs, SMALL)));
    expect((await m.stop()).code).toBe(0);
  });
});
