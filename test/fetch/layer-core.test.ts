// Opening a layer (footer and TOC) and reading it: BlobReader over the UnitFetcher.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { DfError, isDfError } from '../../src/errors.js';
import { DfbReader } from '../../src/blob/reader.js';
import { BlockMemoryCache } from '../../src/fetch/block-memory-cache.js';
import { LayerCore } from '../../src/layer/layer-core.js';
import { Priority, type ReadContext } from '../../src/fetch/types.js';
import { open as openFile } from 'node:fs/promises';
import { FakeSource, gate } from './helpers.js';
import { blockRange, cleanups, open, readAll, runCleanups, setup } from './layer-setup.js';

afterEach(runCleanups);

describe('LayerCore.open (footer and TOC)', () => {
  it('gets footer and TOC with two range reads and stores them', async () => {
    const s = await setup();
    const { toc, cache, tocSource } = await open(s);
    expect(tocSource).toBe('remote');
    expect(s.src.requests.length).toBe(2);
    expect(s.src.requests[0]).toEqual({ offset: s.tb.blob.size - 96, length: 96 });
    expect(toc.blockCount).toBe(s.tb.toc.blockCount);
    expect(cache.has(toc.blockCount)).toBe(true);
  });

  it('rejects a TOC that does not match the annotation', async () => {
    const s = await setup();
    const cache = await BlobCache.open({ dir: s.cacheDir, digest: s.tb.blob.digest, size: s.tb.blob.size });
    cleanups.push(() => cache.close());
    await expect(
      LayerCore.open({
        blob: s.tb.blob,
        cache,
        sources: [s.src],
        memoryCache: new BlockMemoryCache(1 << 20),
        expectedTocDigest: 'sha256:' + '0'.repeat(64),
      }),
    ).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
  });
});

describe('reads (BlobReader over the UnitFetcher)', () => {
  it('fetches exactly the blocks under a read, in one merged request', async () => {
    const s = await setup();
    const { core } = await open(s);
    s.src.reset();
    const ino = s.tb.ino('usr/big1');
    const got = await core.reader.read(ino, 20_000, 70_000);
    expect(got.equals(s.tb.files.get('usr/big1')!.subarray(20_000, 90_000))).toBe(true);
    expect(s.src.requests).toEqual([blockRange(s.tb, 'usr/big1', 20_000, 70_000)]);
    expect(core.fetcher.stats.blocks.registry).toBeGreaterThan(1);
    // again: from memory, no request
    await core.reader.read(ino, 20_000, 70_000);
    expect(s.src.requests.length).toBe(1);
    expect(core.fetcher.stats.blocks.memory).toBeGreaterThan(0);
  });

  it('serves from the disk cache when the memory cache is too small', async () => {
    const s = await setup();
    const { core } = await open(s, { mem: new BlockMemoryCache(1) });
    await readAll(core.reader, s.tb);
    s.src.reset();
    await readAll(core.reader, s.tb);
    expect(s.src.requests.length).toBe(0);
    expect(core.fetcher.stats.blocks.cache).toBeGreaterThan(0);
  });

  it('splits long runs at maxRunBytes', async () => {
    const s = await setup();
    const { core } = await open(s, { options: { maxRunBytes: 40_000 } });
    s.src.reset();
    await core.reader.read(s.tb.ino('usr/big2'), 0, 250_000);
    expect(s.src.requests.length).toBeGreaterThan(1);
    for (const r of s.src.requests) expect(r.length).toBeLessThanOrEqual(40_000);
    const total = s.src.requests.reduce((n, r) => n + r.length, 0);
    expect(total).toBe(blockRange(s.tb, 'usr/big2').length);
  });

  it('coalesces concurrent reads of the same blocks into one fetch', async () => {
    const s = await setup();
    const { core } = await open(s);
    s.src.reset();
    const g = gate();
    s.src.gate = g.promise;
    const ino = s.tb.ino('usr/big1');
    const reads = [
      core.reader.read(ino, 0, 60_000),
      core.reader.read(ino, 0, 60_000),
      core.reader.read(ino, 10_000, 20_000),
    ];
    await new Promise((r) => setImmediate(r));
    g.open();
    const [a, b, c] = await Promise.all(reads);
    const content = s.tb.files.get('usr/big1')!;
    expect(a!.equals(content.subarray(0, 60_000))).toBe(true);
    expect(b!.equals(a!)).toBe(true);
    expect(c!.equals(content.subarray(10_000, 30_000))).toBe(true);
    expect(s.src.requests).toEqual([blockRange(s.tb, 'usr/big1', 0, 60_000)]);
  });

  it('overlapping concurrent reads fetch each block once', async () => {
    const s = await setup();
    const { core } = await open(s);
    s.src.reset();
    const g = gate();
    s.src.gate = g.promise;
    const ino = s.tb.ino('usr/big1');
    const reads = [core.reader.read(ino, 0, 100_000), core.reader.read(ino, 50_000, 150_000)];
    await new Promise((r) => setImmediate(r));
    g.open();
    await Promise.all(reads);
    expect(s.src.bytes).toBe(blockRange(s.tb, 'usr/big1', 0, 200_000).length);
  });

  it('rejects a corrupt block, refetches it and never caches the bad bytes', async () => {
    const s = await setup();
    const { core, cache } = await open(s);
    s.src.reset();
    const r = blockRange(s.tb, 'etc/f3');
    s.src.corruptAt.push({ offset: r.offset + 5, times: 1 });
    const got = await core.reader.read(s.tb.ino('etc/f3'), 0, 1 << 20);
    expect(got.equals(s.tb.files.get('etc/f3')!)).toBe(true);
    expect(core.fetcher.stats.verifyFailures).toBe(1);
    expect(core.fetcher.stats.verifyFailuresBy).toMatchObject({ registry: 1, cache: 0 });
    expect(core.fetcher.stats.refetches).toBe(1);
    expect(s.src.requests.length).toBe(2);
    const cached = await cache.read(r.offset, r.length);
    expect(cached.equals(s.tb.bytes.subarray(r.offset, r.offset + r.length))).toBe(true);
  });

  it('tells the read context whether the read waited on a fetch; a read from memory or the cache did not', async () => {
    const s = await setup();
    const { core } = await open(s, { mem: new BlockMemoryCache(1) });
    const ino = s.tb.ino('usr/big1');
    const remote = { pid: 42, blockedMs: 0 } as ReadContext;
    await core.reader.read(ino, 0, 100_000, undefined, remote);
    expect(remote.blocked).toBe(true);
    expect(remote.blockedMs).toBeGreaterThanOrEqual(0);
    const cached = { pid: 42, blockedMs: 0 } as ReadContext;
    await core.reader.read(ino, 0, 100_000, undefined, cached);
    expect(cached.blocked).toBeUndefined();
    expect(cached.blockedMs).toBe(0);
    expect(core.fetcher.stats.blocks.cache).toBeGreaterThan(0);
  });

  it('counts a block that rotted in the cache file as a verification failure of source cache', async () => {
    const s = await setup();
    const { core, cache } = await open(s, { mem: new BlockMemoryCache(1) });
    const ino = s.tb.ino('etc/f3');
    const want = await core.reader.read(ino, 0, 1 << 20);
    await cache.flush?.();
    const r = blockRange(s.tb, 'etc/f3');
    const fh = await openFile(cache.dataPath, 'r+');
    try {
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, r.offset + 3);
      b[0] = b[0]! ^ 0xff;
      await fh.write(b, 0, 1, r.offset + 3);
    } finally {
      await fh.close();
    }
    const again = await core.reader.read(ino, 0, 1 << 20);
    expect(again.equals(want)).toBe(true);
    expect(core.fetcher.stats.verifyFailuresBy).toMatchObject({ cache: 1, registry: 0 });
  });

  it('a block that is always corrupt fails the read and is not cached', async () => {
    const s = await setup();
    const { core, cache } = await open(s, { options: { retries: 2 } });
    const r = blockRange(s.tb, 'etc/f2');
    const block = s.tb.toc.blockAt(s.tb.toc.stat(s.tb.ino('etc/f2')).dataOffset);
    s.src.corruptAt.push({ offset: r.offset + 1, times: 1000 });
    const err = await core.reader.read(s.tb.ino('etc/f2'), 0, 100).catch((e) => e);
    expect(isDfError(err, 'DIGEST_MISMATCH')).toBe(true);
    expect(core.fetcher.stats.verifyFailures).toBe(3);
    expect(cache.has(block)).toBe(false);
  });

  it('retries after a source error and moves on to the next source', async () => {
    const s = await setup();
    const { core } = await open(s);
    s.src.failNext = 1;
    const got = await core.reader.read(s.tb.ino('etc/f1'), 0, 1 << 20);
    expect(got.equals(s.tb.files.get('etc/f1')!)).toBe(true);

    const s2 = await setup();
    const bad2 = new FakeSource(s2.tb.bytes);
    const { core: f2 } = await open(s2, { sources: [s2.src] });
    // a second, failing source first in the list for block reads (openLayer used the good one)
    (f2.fetcher as unknown as { sources: FakeSource[] }).sources.unshift(bad2);
    bad2.failNext = 1000;
    const got2 = await f2.reader.read(s2.tb.ino('etc/f4'), 0, 1 << 20);
    expect(got2.equals(s2.tb.files.get('etc/f4')!)).toBe(true);
    expect(bad2.requests.length).toBe(1);
    expect(f2.fetcher.stats.errors.registry).toBe(1);
  });

  it('a hanging source gives TIMEOUT within the read budget, never a hang', async () => {
    const s = await setup();
    const { core } = await open(s, {
      options: { readTimeoutMs: 300, requestTimeoutMs: 50, retries: 100 },
    });
    s.src.hang = true;
    const err = await core.reader.read(s.tb.ino('usr/big2'), 0, 100).catch((e) => e);
    expect(err).toBeInstanceOf(DfError);
    expect(err.code).toBe('TIMEOUT');
    expect(core.fetcher.stats.readTimeouts).toBe(1);
    expect(s.src.requests.length).toBeGreaterThan(1); // per-request timeouts led to retries
  });

  it('a source that fails every attempt rejects with its error before the read budget', async () => {
    const s = await setup();
    const { core } = await open(s, { options: { readTimeoutMs: 60_000, retries: 2 } });
    s.src.failNext = 1000;
    const err = await core.reader.read(s.tb.ino('usr/big2'), 0, 100).catch((e) => e);
    expect(err.code).toBe('NETWORK');
    expect(s.src.requests.length - 2).toBe(3);
  });

  it('honours abort signals', async () => {
    const s = await setup();
    const { core } = await open(s);
    s.src.hang = true;
    const ac = new AbortController();
    const p = core.reader.read(s.tb.ino('usr/big2'), 0, 100, ac.signal);
    ac.abort();
    await expect(p).rejects.toMatchObject({ code: 'ABORTED' });
    await expect(core.reader.read(s.tb.ino('usr/big2'), 0, 100, AbortSignal.abort())).rejects.toMatchObject({
      code: 'ABORTED',
    });
  });

  it('rejects non-files and clamps reads at the end of the file', async () => {
    const s = await setup();
    const { core } = await open(s);
    await expect(core.reader.read(s.tb.ino('etc'), 0, 10)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
    const f = s.tb.files.get('etc/f1')!;
    expect(
      (await core.reader.read(s.tb.ino('etc/f1'), f.length - 3, 100)).equals(f.subarray(f.length - 3)),
    ).toBe(true);
    expect((await core.reader.read(s.tb.ino('etc/f1'), f.length + 3, 100)).length).toBe(0);
  });
});

describe('the TOC unit from a source', () => {
  it('is checked by its hash against the verified one, never inflated', async () => {
    const s = await setup();
    const { core, cache, toc } = await open(s);
    const tocUnit = toc.blockCount;
    const off = s.tb.toc.blockOffset(tocUnit);
    cache.invalidate(tocUnit, s.tb.blob.size - off);
    s.src.reset();
    s.src.corruptAt.push({ offset: off + 10, times: 1 });
    const inflate = vi.spyOn(DfbReader, 'decodeStoredToc');
    const inflateAsync = vi.spyOn(DfbReader, 'decodeStoredTocAsync');
    try {
      const [unit] = await core.fetcher.units([tocUnit], Priority.Fill);
      expect(unit!.equals(s.tb.bytes.subarray(off))).toBe(true);
      expect(core.fetcher.stats.verifyFailures).toBe(1);
      expect(s.src.requests.length).toBe(2);
      expect(inflate).not.toHaveBeenCalled();
      expect(inflateAsync).not.toHaveBeenCalled();
    } finally {
      inflate.mockRestore();
      inflateAsync.mockRestore();
    }
  });
});
