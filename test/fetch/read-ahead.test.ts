// Read-ahead (fetch/read-ahead.ts) over a real LayerCore (BlobReader, UnitFetcher, BlobCache) and a FakeSource.
import { afterEach, describe, expect, it } from 'vitest';
import { ReadAhead } from '../../src/fetch/read-ahead.js';
import { FetchScheduler } from '../../src/fetch/scheduler.js';
import { gate } from './helpers.js';
import { cleanups, open, runCleanups, setup } from './layer-setup.js';

afterEach(runCleanups);

const KB = 1024;
const opts = { minWindowBytes: 32 * KB, maxWindowBytes: 128 * KB, idleMs: 60_000 };

async function withReadAhead(scheduler?: FetchScheduler) {
  const s = await setup();
  const { core } = await open(s, { scheduler });
  const ra = new ReadAhead(core.reader, core.fetcher, opts);
  cleanups.push(async () => ra.close());
  s.src.reset();
  const path = 'usr/big1';
  return { s, core, ra, ino: s.tb.ino(path), content: s.tb.files.get(path)! };
}

describe('ReadAhead', () => {
  it('a file read front to back: growing windows, far fewer requests than reads, same bytes', async () => {
    const { s, ra, ino, content } = await withReadAhead();
    const chunk = 8 * KB;
    const parts: Buffer[] = [];
    for (let off = 0; off < content.length; off += chunk) parts.push(await ra.read(ino, off, chunk));
    expect(Buffer.concat(parts).equals(content)).toBe(true);
    const reads = Math.ceil(content.length / chunk);
    expect(ra.counters.windows).toBeGreaterThanOrEqual(2);
    expect(s.src.requests.length).toBeLessThan(reads / 4);
    // windows grow: the largest request is several blocks
    expect(Math.max(...s.src.requests.map((r) => r.length))).toBeGreaterThan(64 * KB);
  });

  it('random reads get no read-ahead', async () => {
    const { s, ra, ino, content } = await withReadAhead();
    for (const off of [200_000, 10_000, 150_000, 60_000, 280_000, 100_000]) {
      const got = await ra.read(ino, off, 4 * KB);
      expect(got.equals(content.subarray(off, off + 4 * KB))).toBe(true);
    }
    expect(ra.counters.windows).toBe(0);
    expect(s.src.requests.every((r) => r.length <= 2 * 16 * KB + 1024)).toBe(true);
  });

  it('release drops a queued window before it reaches the source and leaves nothing in flight', async () => {
    const { s, core, ra, ino, content } = await withReadAhead(new FetchScheduler({ concurrency: 1 }));
    await ra.read(ino, 0, 8 * KB);
    const g = gate();
    s.src.gate = g.promise;
    // the second sequential read issues the first window behind its own (gated) fetch
    const second = ra.read(ino, 8 * KB, 32 * KB);
    expect(ra.counters.windows).toBe(1);
    const windowStart = s.src.requests.length;
    ra.release(ino);
    g.open();
    expect((await second).equals(content.subarray(8 * KB, 40 * KB))).toBe(true);
    await core.fetcher.settled();
    expect(core.fetcher.inFlightCount).toBe(0);
    expect(ra.bytesInFlight).toBe(0);
    // only the read's own request went out
    expect(s.src.requests.length).toBe(windowStart);
    expect(ra.counters.cancelled).toBe(1);
  });

  it('release aborts a window whose request is running: its blocks never reach the cache', async () => {
    const { s, core, ra, ino, content } = await withReadAhead();
    await ra.read(ino, 0, 8 * KB);
    const g = gate();
    s.src.gate = g.promise;
    const before = s.src.requests.length;
    const cachedBefore = new Set<number>();
    for (let u = 0; u < core.toc.blockCount; u++) if (core.fetcher.cache.has(u)) cachedBefore.add(u);
    const second = ra.read(ino, 8 * KB, 8 * KB); // its block is cached; the window [16K, 48K) goes out
    await new Promise((r) => setImmediate(r));
    expect(s.src.requests.length).toBe(before + 1);
    ra.release(ino);
    g.open();
    expect((await second).equals(content.subarray(8 * KB, 16 * KB))).toBe(true);
    await core.fetcher.settled();
    expect(core.fetcher.inFlightCount).toBe(0);
    expect(ra.bytesInFlight).toBe(0);
    const st = core.toc.stat(ino);
    const [first, last] = core.toc.blocksForRange(st.dataOffset + 16 * KB, 32 * KB);
    const fresh = [];
    for (let u = first; u <= last; u++) if (!cachedBefore.has(u)) fresh.push(u);
    expect(fresh.length).toBeGreaterThan(0);
    for (const u of fresh) expect(core.fetcher.cache.has(u), `block ${u}`).toBe(false);
  });

  it('a blocked reader that joined a window keeps it going after release', async () => {
    const { s, core, ra, ino, content } = await withReadAhead();
    await ra.read(ino, 0, 8 * KB);
    const g = gate();
    s.src.gate = g.promise;
    const second = ra.read(ino, 8 * KB, 8 * KB); // window [16K, 48K) in flight behind the gate
    const inWindow = core.reader.read(ino, 40 * KB, 4 * KB); // joins the window at Blocked
    ra.release(ino);
    g.open();
    expect((await inWindow).equals(content.subarray(40 * KB, 44 * KB))).toBe(true);
    expect((await second).equals(content.subarray(8 * KB, 16 * KB))).toBe(true);
    await core.fetcher.settled();
    expect(core.fetcher.inFlightCount).toBe(0);
  });

  it('holds one tripwire block per window back from the C path until a read reaches it', async () => {
    const { core, ra, ino } = await withReadAhead();
    const released: number[] = [];
    ra.onRelease((u) => released.push(u));
    await ra.read(ino, 0, 8 * KB);
    await ra.read(ino, 8 * KB, 8 * KB); // window [16K, 48K)
    await core.fetcher.settled();
    const st = core.toc.stat(ino);
    const [first, last] = core.toc.blocksForRange(st.dataOffset + 16 * KB, 32 * KB);
    const held = [];
    for (let u = first; u <= last; u++) if (ra.isHeld(u)) held.push(u);
    expect(held.length).toBe(1);
    expect(core.fetcher.cache.has(held[0]!)).toBe(true);
    // a read past it lets it go
    await ra.read(ino, 40 * KB, 8 * KB);
    expect(released).toContain(held[0]);
    expect(ra.isHeld(held[0]!)).toBe(false);
    // and ending the stream lets every hold go
    ra.release(ino);
    for (let u = 0; u < core.toc.blockCount; u++) expect(ra.isHeld(u)).toBe(false);
  });
});
