// A layer's background fill, restarts and crashes, a full disk, and which sources fill may use.
import { readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { type CacheIo, defaultCacheIo } from '../../src/cache/blob-cache.js';
import { DfError, isDfError } from '../../src/errors.js';
import { BlockMemoryCache } from '../../src/fetch/block-memory-cache.js';
import { FetchScheduler } from '../../src/fetch/scheduler.js';
import {
  deferredBySource,
  isDeferred,
  isSourceUnavailable,
  Priority,
  sourceUnavailable,
} from '../../src/fetch/types.js';
import { sha256Digest } from '../helpers/digest.js';
import { FakeSource, gate } from './helpers.js';
import { blockRange, open, readAll, runCleanups, setup } from './layer-setup.js';

afterEach(runCleanups);

describe('background fill', () => {
  it('fills the whole blob in runs, then the cache file equals the blob', async () => {
    const s = await setup();
    const { core, cache } = await open(s, { options: { maxRunBytes: 64 * 1024 } });
    await core.reader.read(s.tb.ino('etc/f0'), 0, 100);
    s.src.reset();
    core.fill.start();
    await core.fill.whenComplete();
    expect(cache.isComplete).toBe(true);
    // the TOC is anchored by the annotation and every unit was verified as it was stored: no second pass
    expect(core.fetcher.stats.completeByBlocks).toBe(1);
    expect(core.fetcher.stats.completeVerified).toBe(0);
    expect(cache.verified).toBe(false);
    for (const r of s.src.requests) expect(r.length).toBeLessThanOrEqual(64 * 1024);
    expect(s.src.bytes).toBe(
      s.tb.blob.size -
        blockRange(s.tb, 'etc/f0', 0, 100).length -
        (s.tb.blob.size - s.tb.toc.storedDataLength),
    );
    await cache.flush();
    const file = await readFile(join(s.cacheDir, 'data'));
    expect(sha256Digest(file)).toBe(s.tb.blob.digest);
    // everything now served locally
    s.src.hang = true;
    await readAll(core.reader, s.tb);
  });

  it('without a TOC digest annotation, hashes the complete file against the blob digest', async () => {
    const s = await setup();
    const { core, cache } = await open(s, { expectedTocDigest: null });
    core.fill.start();
    await core.fill.whenComplete();
    expect(cache.verified).toBe(true);
    expect(core.fetcher.stats.completeVerified).toBe(1);
    expect(core.fetcher.stats.completeByBlocks).toBe(0);
    await cache.flush();
    expect(sha256Digest(await readFile(join(s.cacheDir, 'data')))).toBe(s.tb.blob.digest);
  });

  it('starts after the first read by default and fill is rate-limited through the bucket', async () => {
    const s = await setup();
    const { core, cache } = await open(s, {
      options: { fillAfterFirstRead: true, fillRateBytesPerSec: 0 },
    });
    expect(core.fill.started).toBe(false);
    await core.reader.read(s.tb.ino('etc/f0'), 0, 100);
    expect(core.fill.started).toBe(true);
    await core.fill.whenComplete();
    expect(cache.isComplete).toBe(true);
    expect(core.fetcher.stats.fillBytes).toBeGreaterThan(0);
  });

  it('keeps going after failures until complete', async () => {
    const s = await setup();
    const { core, cache } = await open(s, { options: { retries: 0, maxRunBytes: 32 * 1024 } });
    s.src.failNext = 5;
    s.src.corruptAt.push({ offset: 100, times: 3 });
    core.fill.start();
    await core.fill.whenComplete();
    expect(cache.isComplete).toBe(true);
    expect(sha256Digest(await readFile(join(s.cacheDir, 'data')))).toBe(s.tb.blob.digest);
  });

  it('blocked reads run before queued fill work', async () => {
    const s = await setup();
    const scheduler = new FetchScheduler({ concurrency: 1 });
    const { core } = await open(s, { scheduler, options: { maxRunBytes: 32 * 1024, fillConcurrency: 2 } });
    s.src.reset();
    const g = gate();
    s.src.gate = g.promise;
    const first = core.reader.read(s.tb.ino('etc/f0'), 0, 100); // takes the only slot
    await new Promise((r) => setImmediate(r));
    core.fill.start();
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    // fill waits for its turn while a blocked read holds the slot: nothing of it is queued or sent
    expect(scheduler.running).toBe(1);
    expect(s.src.requests.length).toBe(1);
    const second = core.reader.read(s.tb.ino('usr/big2'), 200_000, 100);
    await new Promise((r) => setImmediate(r));
    g.open();
    await Promise.all([first, second]);
    const want2 = blockRange(s.tb, 'usr/big2', 200_000, 100);
    expect(s.src.requests[0]).toEqual(blockRange(s.tb, 'etc/f0', 0, 100));
    expect(s.src.requests[1]).toEqual(want2);
    await core.fill.whenComplete();
  });

  it('a read that joins a fill run in flight tells its source to stop holding the bytes back', async () => {
    const s = await setup();
    const { core } = await open(s, { options: { maxRunBytes: 256 * 1024 } });
    s.src.reset();
    const g = gate();
    s.src.gate = g.promise;
    core.fill.start();
    for (let i = 0; i < 10 && !s.src.requests.length; i++) await new Promise((r) => setTimeout(r, 5));
    const run = s.src.requests[0]!;
    expect(s.src.hurried).toEqual([]);
    // a block inside the run in flight: the read waits on the run (no request of its own) and hurries it
    const want = blockRange(s.tb, 'etc/f0', 0, 100);
    expect(want.offset).toBeGreaterThanOrEqual(run.offset);
    expect(want.offset + want.length).toBeLessThanOrEqual(run.offset + run.length);
    const read = core.reader.read(s.tb.ino('etc/f0'), 0, 100);
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(s.src.hurried).toEqual([run]);
    g.open();
    await read;
    expect(s.src.requests.filter((r) => r.offset === want.offset && r.length === want.length)).toEqual([]);
    await core.fill.whenComplete();
  });

  it('close() stops the fill', async () => {
    const s = await setup();
    const { core, cache } = await open(s, { options: { fillRateBytesPerSec: 1 } });
    core.fill.start();
    await core.close();
    await expect(core.fill.whenComplete()).rejects.toMatchObject({ code: 'ABORTED' });
    expect(cache.isComplete).toBe(false);
  });
});

describe('restart and crash safety', () => {
  it('reopening resumes: TOC from the cache, present blocks not refetched', async () => {
    const s = await setup();
    const a = await open(s);
    await a.core.reader.read(s.tb.ino('usr/big1'), 0, 100_000);
    await a.core.close();
    await a.cache.close();
    const filled = a.cache.filledBytes;
    s.src.reset();
    const b = await open(s);
    expect(b.tocSource).toBe('cache');
    expect(b.cache.filledBytes).toBe(filled);
    const got = await b.core.reader.read(s.tb.ino('usr/big1'), 0, 100_000);
    expect(got.equals(s.tb.files.get('usr/big1')!.subarray(0, 100_000))).toBe(true);
    expect(s.src.requests.length).toBe(0);
    b.core.fill.start();
    await b.core.fill.whenComplete();
    expect(s.src.bytes).toBe(s.tb.blob.size - filled);
  });

  it('data written but bitmap never flushed (crash): blocks are refetched, data correct', async () => {
    const s = await setup();
    const a = await open(s, { flushIntervalMs: 1e9, flushBytes: 1e12 });
    await a.core.reader.read(s.tb.ino('usr/big1'), 0, 100_000);
    expect(a.cache.presentUnits).toBeGreaterThan(1);
    // no close, no flush: the process "dies" here
    s.src.reset();
    const b = await open(s);
    expect(b.cache.presentUnits).toBe(1); // only the TOC unit, stored again by openLayer
    expect(b.tocSource).toBe('remote');
    const got = await b.core.reader.read(s.tb.ino('usr/big1'), 0, 100_000);
    expect(got.equals(s.tb.files.get('usr/big1')!.subarray(0, 100_000))).toBe(true);
    expect(s.src.requests.length).toBe(3);
  });

  it('a torn bitmap is treated as empty', async () => {
    const s = await setup();
    const a = await open(s);
    await a.core.reader.read(s.tb.ino('usr/big1'), 0, 100_000);
    await a.core.close();
    await a.cache.close();
    const bm = join(s.cacheDir, 'bitmap');
    await truncate(bm, (await stat(bm)).size - 7);
    s.src.reset();
    const b = await open(s);
    expect(b.tocSource).toBe('remote');
    const got = await b.core.reader.read(s.tb.ino('usr/big1'), 0, 100_000);
    expect(got.equals(s.tb.files.get('usr/big1')!.subarray(0, 100_000))).toBe(true);
    await b.core.close();
    await b.cache.close();
    // garbled (same length, one byte flipped)
    const buf = await readFile(bm);
    buf[30] = buf[30]! ^ 0x10;
    await writeFile(bm, buf);
    const c = await open(s);
    expect(c.tocSource).toBe('remote');
  });

  it('a cached block that rotted on disk is detected, dropped and refetched', async () => {
    const s = await setup();
    const a = await open(s, { mem: new BlockMemoryCache(1) });
    await a.core.reader.read(s.tb.ino('etc/f5'), 0, 1 << 20);
    const r = blockRange(s.tb, 'etc/f5');
    const fh = await import('node:fs/promises').then((m) => m.open(join(s.cacheDir, 'data'), 'r+'));
    await fh.write(Buffer.from([0xaa, 0xbb]), 0, 2, r.offset + 3);
    await fh.close();
    s.src.reset();
    const got = await a.core.reader.read(s.tb.ino('etc/f5'), 0, 1 << 20);
    expect(got.equals(s.tb.files.get('etc/f5')!)).toBe(true);
    expect(a.core.fetcher.stats.verifyFailures).toBe(1);
    expect(s.src.requests.length).toBe(1);
  });
});

describe('full disk', () => {
  it('ENOSPC on a block write: the reader gets the verified bytes, bitmap unchanged, stored once space is back', async () => {
    const s = await setup();
    let full = false;
    const io: CacheIo = {
      async write(fh, data, pos) {
        if (full) {
          // a partial write, then ENOSPC, as a real full disk does
          await defaultCacheIo.write(fh, data.subarray(0, 10), pos);
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        }
        return defaultCacheIo.write(fh, data, pos);
      },
    };
    // no memory cache: the second read goes to the sources and the cache again
    const a = await open(s, { io, mem: new BlockMemoryCache(1) });
    full = true;
    const before = a.cache.presentUnits;
    const want = s.tb.files.get('usr/big2')!.subarray(0, 50_000);
    const onFullDisk = await a.core.reader.read(s.tb.ino('usr/big2'), 0, 50_000);
    expect(onFullDisk.equals(want)).toBe(true);
    expect(a.cache.presentUnits).toBe(before);
    await a.cache.flush();
    full = false;
    const got = await a.core.reader.read(s.tb.ino('usr/big2'), 0, 50_000);
    expect(got.equals(want)).toBe(true);
    await a.core.close();
    await a.cache.close();
    // after a restart, every block the bitmap claims is good
    const b = await open(s, { mem: new BlockMemoryCache(1) });
    s.src.hang = true;
    const again = await b.core.reader.read(s.tb.ino('usr/big2'), 0, 50_000);
    expect(again.equals(got)).toBe(true);
    expect(b.core.fetcher.stats.verifyFailures).toBe(0);
  });

  it('ENOSPC under the background fill: it backs off (units fetched but not stored count as failed) and completes once space is back', async () => {
    const s = await setup();
    let full = false;
    const io: CacheIo = {
      async write(fh, data, pos) {
        if (full)
          throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
        return defaultCacheIo.write(fh, data, pos);
      },
    };
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    const a = await open(s, { io, logger });
    const before = a.cache.presentUnits;
    full = true;
    a.core.fill.start();
    await vi.waitFor(
      () => expect(lines.join('')).toContain('background fill: some blocks failed; retrying'),
      {
        timeout: 20_000,
      },
    );
    expect(a.cache.presentUnits).toBe(before);
    full = false;
    await a.core.fill.whenComplete();
    expect(sha256Digest(await readFile(join(s.cacheDir, 'data')))).toBe(s.tb.blob.digest);
  });

  it('ENOSPC while storing the TOC still mounts; fill stores it later', async () => {
    const s = await setup();
    let full = true;
    const io: CacheIo = {
      async write(fh, data, pos) {
        if (full) throw Object.assign(new Error('ENOSPC'), { code: 'ENOSPC' });
        return defaultCacheIo.write(fh, data, pos);
      },
    };
    const a = await open(s, { io });
    expect(a.cache.has(a.toc.blockCount)).toBe(false);
    full = false;
    a.core.fill.start();
    await a.core.fill.whenComplete();
    expect(sha256Digest(await readFile(join(s.cacheDir, 'data')))).toBe(s.tb.blob.digest);
  });
});

describe('source policy: the registry is the origin', () => {
  it('fill waits for a slow seed instead of going to the registry; reads and a seed tier that is down do not', async () => {
    const s = await setup();
    const seed = new FakeSource(s.tb.bytes, 'seed');
    const registry = new FakeSource(s.tb.bytes, 'registry');
    const a = await open(s, { sources: [seed, registry], options: { retries: 2 } });
    const blocks = s.tb.toc.blockCount;
    expect(blocks).toBeGreaterThan(4);
    seed.reset(); // footer and TOC came from the seed
    // the seed is busy: fill gives up on the run (to retry later) and never asks the registry
    seed.failNext = 1000;
    seed.failWith = () => DfError.timeout('seed busy');
    await expect(a.core.fetcher.units([0], Priority.Fill)).rejects.toSatisfy((e) => isDfError(e, 'TIMEOUT'));
    expect(seed.requests.length).toBe(3);
    expect(registry.requests.length).toBe(0);
    // a reader blocked on the same kind of block goes on to the registry
    const [b1] = await a.core.fetcher.units([1], Priority.Blocked);
    expect(b1!.length).toBe(s.tb.toc.blockStoredLength(1));
    expect(registry.requests.length).toBeGreaterThan(0);
    // no seed is up: fill reaches the registry at once
    registry.reset();
    seed.failWith = () => sourceUnavailable('no seed is up');
    await a.core.fetcher.units([2], Priority.Fill);
    expect(registry.requests.length).toBe(1);
    // a planner's run restricted to the seed does not reach the registry even then
    registry.reset();
    await expect(a.core.fetcher.units([3], Priority.Fill, undefined, { only: ['seed'] })).rejects.toSatisfy(
      isSourceUnavailable,
    );
    expect(registry.requests.length).toBe(0);
    // a run the seed defers is not retried: the planner picks again
    seed.reset();
    seed.failWith = () => deferredBySource('on its way to another node');
    await expect(a.core.fetcher.units([3], Priority.Fill, undefined, { only: ['seed'] })).rejects.toSatisfy(
      isDeferred,
    );
    expect(seed.requests.length).toBe(1);
    expect(registry.requests.length).toBe(0);
  });
});
