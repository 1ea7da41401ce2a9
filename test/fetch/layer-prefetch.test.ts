// Mount-time prefetch: a layer whose TOC has prefetch ranges fetches their blocks when it opens, in large
// runs at Prefetch priority; on-demand reads go first; releasing the layer stops it; without ranges nothing
// changes.
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FetchScheduler } from '../../src/fetch/scheduler.js';
import { Priority } from '../../src/fetch/types.js';
import { makeBlob } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { FakeSource, gate } from './helpers.js';
import { blockRange, cleanups, open, readAll, runCleanups, setup, type Setup } from './layer-setup.js';

afterEach(runCleanups);

/** The ~40-block test blob laid out for a list: usr/big2 (incompressible, 250 kB) and etc/f3 first. */
async function setupListed(): Promise<Setup> {
  const { dir, cleanup } = await tempDir();
  cleanups.push(cleanup);
  const tb = await makeBlob(dir, 'p', [{ path: '/usr/big2' }, { path: '/etc/f3', ranges: [[0, 100]] }]);
  return { dir, tb, src: new FakeSource(tb.bytes), cacheDir: join(dir, 'cache') };
}

/** Blob range of the blocks under the prefetch ranges (they start the stream: one span from 0). */
function prefetchSpan(s: Setup): { offset: number; length: number } {
  const r = s.tb.toc.prefetchRanges;
  const last = r[r.length - 1]!;
  const [, b] = s.tb.toc.blocksForRange(last.offset, last.length);
  return { offset: 0, length: s.tb.toc.blockOffset(b + 1) };
}

const ticks = async (n = 20) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

describe('mount-time prefetch', () => {
  it('fetches the prefetch ranges right after the TOC, in one large request, and counts the bytes', async () => {
    const s = await setupListed();
    // big2 whole and the first 100 bytes of f3 right after it: one merged range
    expect(s.tb.toc.prefetchRanges).toEqual([{ offset: 0, length: 250_100 }]);
    const { core } = await open(s);
    await core.prefetch.done();
    const span = prefetchSpan(s);
    expect(s.src.requests.slice(2)).toEqual([span]);
    expect(core.fetcher.stats.prefetchBytes).toBe(span.length);
    s.src.reset();
    const ino = s.tb.ino('usr/big2');
    expect((await core.reader.read(ino, 0, 250_000)).equals(s.tb.files.get('usr/big2')!)).toBe(true);
    expect(s.src.requests).toEqual([]);
    // the rest still reads
    await readAll(core.reader, s.tb);
  });

  it('lets on-demand reads asked for during the prefetch go before its later runs', async () => {
    const s = await setupListed();
    const scheduler = new FetchScheduler({ concurrency: 1 });
    const { core } = await open(s, { scheduler, options: { prefetchOnOpen: false, maxRunBytes: 40_000 } });
    s.src.reset();
    const g = gate();
    s.src.gate = g.promise;
    core.prefetch.start();
    await vi.waitFor(() => expect(s.src.requests.length).toBe(1));
    // the first run holds the only slot; the second waits at Prefetch priority; now a process blocks on a read
    const big1 = s.tb.files.get('usr/big1')!;
    const read = core.reader.read(s.tb.ino('usr/big1'), 0, big1.length);
    await vi.waitFor(() => expect(scheduler.queued(Priority.Blocked)).toBeGreaterThan(0));
    expect(scheduler.queued(Priority.Prefetch)).toBe(1);
    g.open();
    expect((await read).equals(big1)).toBe(true);
    await core.prefetch.done();
    const span = prefetchSpan(s);
    const inPrefetch = (r: { offset: number }) => r.offset < span.offset + span.length;
    const kinds = s.src.requests.map((r) => (inPrefetch(r) ? 'P' : 'B')).join('');
    // one prefetch run, then every on-demand run, then the remaining prefetch runs
    expect(kinds).toMatch(/^PB+P+$/);
    const onDemand = s.src.requests.filter((r) => !inPrefetch(r));
    expect(onDemand.reduce((n, r) => n + r.length, 0)).toBe(blockRange(s.tb, 'usr/big1').length);
    const pre = s.src.requests.filter(inPrefetch);
    expect(pre.reduce((n, r) => n + r.length, 0)).toBe(span.length);
    for (const r of pre) expect(r.length).toBeLessThanOrEqual(40_000);
  });

  it('stops when the layer is released mid-prefetch, leaving no request or task behind', async () => {
    const s = await setupListed();
    const scheduler = new FetchScheduler({ concurrency: 2 });
    const aborted: AbortSignal[] = [];
    const src = s.src;
    const fetch = src.fetch.bind(src);
    src.fetch = (blob, off, len, signal) => {
      aborted.push(signal);
      return fetch(blob, off, len, signal);
    };
    const { core, cache } = await open(s, {
      scheduler,
      options: { prefetchOnOpen: false, maxRunBytes: 40_000 },
    });
    src.reset();
    aborted.length = 0;
    src.hang = true; // never answers, ignores its signal
    core.prefetch.start();
    await vi.waitFor(() => expect(src.requests.length).toBe(2));
    await core.close(); // resolves although both requests hang
    await core.prefetch.done();
    await core.fetcher.settled();
    expect(aborted.every((a) => a.aborted)).toBe(true);
    await vi.waitFor(() => expect(scheduler.running).toBe(0));
    expect(scheduler.queued()).toBe(0);
    await ticks();
    expect(src.requests.length).toBe(2); // nothing more went out
    expect(core.fetcher.stats.prefetchBytes).toBe(0);
    expect(cache.presentUnits).toBe(1); // the TOC unit only
  });

  it('changes nothing for a blob without prefetch ranges (format 1.0)', async () => {
    const s = await setup();
    expect(s.tb.toc.prefetchRanges).toEqual([]);
    const { core } = await open(s);
    await core.prefetch.done();
    await ticks();
    expect(s.src.requests.length).toBe(2); // footer and TOC
    expect(core.fetcher.stats.prefetchBytes).toBe(0);
    await readAll(core.reader, s.tb);
  });
});
