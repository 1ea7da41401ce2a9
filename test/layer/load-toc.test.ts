import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { loadToc } from '../../src/layer/load-toc.js';
import { makeBlob } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { FakeSource } from '../fetch/helpers.js';
import { forgedBlobOfSize } from './forge-helper.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

async function setup() {
  const { dir, cleanup } = await tempDir();
  cleanups.push(cleanup);
  const tb = await makeBlob(dir);
  const forged = await forgedBlobOfSize(dir, tb.blob.size);
  const cache = await BlobCache.open({ dir: join(dir, 'cache'), digest: tb.blob.digest, size: tb.blob.size });
  cleanups.push(() => cache.close());
  return { tb, forged, cache };
}

describe('loadToc from untrusted sources', () => {
  it('without a TOC digest annotation, takes the TOC from the registry only, never from a seed or peer', async () => {
    const { tb, forged, cache } = await setup();
    const seed = new FakeSource(forged, 'seed');
    const peer = new FakeSource(forged, 'peer');
    const registry = new FakeSource(tb.bytes, 'registry');
    const loaded = await loadToc({ blob: tb.blob, cache, sources: [peer, seed, registry] });
    expect(loaded.toc.lookup('evil')).toBeUndefined();
    expect(loaded.toc.lookup('usr/big1')).toBe(tb.ino('usr/big1'));
    expect(seed.requests).toEqual([]);
    expect(peer.requests).toEqual([]);
    expect(registry.requests.length).toBe(2);
  });

  it('with the annotation, a forged TOC from a seed is skipped and the next source answers', async () => {
    const { tb, forged, cache } = await setup();
    const seed = new FakeSource(forged, 'seed');
    const registry = new FakeSource(tb.bytes, 'registry');
    const loaded = await loadToc({
      blob: tb.blob,
      cache,
      sources: [seed, registry],
      expectedTocDigest: tb.tocDigest,
    });
    expect(seed.requests.length).toBe(2);
    expect(loaded.toc.lookup('usr/big1')).toBe(tb.ino('usr/big1'));
    // the cache holds the registry's TOC: a second load comes from the cache
    const again = await loadToc({ blob: tb.blob, cache, sources: [], expectedTocDigest: tb.tocDigest });
    expect(again.source).toBe('cache');
    expect(again.toc.lookup('usr/big1')).toBe(tb.ino('usr/big1'));
  });

  it('without the annotation and no registry source, fails with a message saying why', async () => {
    const { tb, cache } = await setup();
    const peer = new FakeSource(tb.bytes, 'peer');
    await expect(loadToc({ blob: tb.blob, cache, sources: [peer] })).rejects.toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringMatching(/no TOC digest annotation/),
    });
    expect(peer.requests).toEqual([]);
  });
});

describe('loadToc with the TOC offset annotation as a hint', () => {
  it('reads TOC and footer in one range request when the hint is right, and caches them as usual', async () => {
    const { tb, cache } = await setup();
    const registry = new FakeSource(tb.bytes, 'registry');
    const at = tb.toc.storedDataLength;
    const loaded = await loadToc({
      blob: tb.blob,
      cache,
      sources: [registry],
      expectedTocDigest: tb.tocDigest,
      tocOffsetHint: at,
    });
    expect(registry.requests).toEqual([{ offset: at, length: tb.blob.size - at }]);
    expect(loaded.toc.lookup('usr/big1')).toBe(tb.ino('usr/big1'));
    const again = await loadToc({ blob: tb.blob, cache, sources: [], expectedTocDigest: tb.tocDigest });
    expect(again.source).toBe('cache');
    expect(again.unitSha256.equals(loaded.unitSha256)).toBe(true);
  });

  it('a wrong hint still gives the verified TOC (the footer decides); out of range, it is not used', async () => {
    const { tb, cache } = await setup();
    const at = tb.toc.storedDataLength;
    const cases: Array<[number, number]> = [
      [at - 1000, 1], // reaches back into the blocks: the TOC is cut out of the same read
      [at + 10, 2], // starts inside the TOC: the footer names the TOC, read next
      [tb.blob.size - 50, 2], // leaves no room for a footer: footer, then TOC
      [tb.blob.size + 5, 2],
    ];
    for (const [hint, requests] of cases) {
      cache.invalidate(tb.toc.blockCount, tb.blob.size - at);
      const registry = new FakeSource(tb.bytes, 'registry');
      const loaded = await loadToc({
        blob: tb.blob,
        cache,
        sources: [registry],
        expectedTocDigest: tb.tocDigest,
        tocOffsetHint: hint,
      });
      expect(loaded.source, `hint ${hint}`).toBe('remote');
      expect(loaded.toc.lookup('usr/big1')).toBe(tb.ino('usr/big1'));
      expect(registry.requests.length, `hint ${hint}`).toBe(requests);
    }
  });

  it('a new cache: the sources are asked while it opens; otherwise the cache is looked at first', async () => {
    const { tb, cache } = await setup();
    for (const cacheIsNew of [true, false]) {
      cache.invalidate(tb.toc.blockCount, tb.blob.size - tb.toc.storedDataLength);
      const registry = new FakeSource(tb.bytes, 'registry');
      let opened!: (c: BlobCache) => void;
      const opening = new Promise<BlobCache>((r) => (opened = r));
      const loading = loadToc({
        blob: tb.blob,
        cache: opening,
        cacheIsNew,
        sources: [registry],
        expectedTocDigest: tb.tocDigest,
      });
      await new Promise((r) => setImmediate(r));
      expect(registry.requests.length > 0, `cacheIsNew ${cacheIsNew}`).toBe(cacheIsNew);
      opened(cache);
      expect((await loading).toc.lookup('usr/big1')).toBe(tb.ino('usr/big1'));
      expect(registry.requests.length).toBe(2);
    }
  });
});
