// LayerStore: one reference-counted layer per blob digest; the last release leaves the swarm, then closes.
import { describe, expect, it } from 'vitest';
import type { Toc } from '../../src/blob/toc.js';
import type { BlobCache } from '../../src/cache/blob-cache.js';
import type { BlobRef } from '../../src/fetch/types.js';
import type { LayerSwarm, SwarmMembership } from '../../src/layer/swarm.js';
import { parseReference } from '../../src/registry/reference.js';
import type { TestBlob } from '../helpers/dfb.js';
import { gate } from '../fetch/helpers.js';
import { storeOverTestBlob, type StoreSetup } from './store-setup.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

/** A swarm that records joins and leaves, and whether the cache was still open when the layer left. */
class RecordingSwarm implements LayerSwarm {
  events: string[] = [];
  cacheOpenAtLeave: boolean[] = [];
  join(layer: { blob: BlobRef; toc: Toc; cache: BlobCache }): SwarmMembership {
    this.events.push(`join ${layer.blob.digest.slice(7, 11)}`);
    return {
      leave: async () => {
        this.events.push(`leave ${layer.blob.digest.slice(7, 11)}`);
        const toc = layer.toc.blockCount;
        const open = await layer.cache
          .read(layer.toc.blockOffset(toc), 8)
          .then(() => true)
          .catch(() => false);
        this.cacheOpenAtLeave.push(open);
      },
    };
  }
}

const ref = parseReference('registry.example/app:1-dfb');

async function setup(): Promise<StoreSetup & { swarm: RecordingSwarm }> {
  const swarm = new RecordingSwarm();
  return { ...(await storeOverTestBlob(cleanups, { swarm })), swarm };
}

const desc = (tb: TestBlob, tocDigest: string | undefined = tb.tocDigest) => ({
  digest: tb.blob.digest,
  size: tb.blob.size,
  tocDigest,
  diffId: undefined,
});

describe('LayerStore', () => {
  it('shares one open layer between holders and closes it at the last release', async () => {
    const { tb, src, cache, store, swarm } = await setup();
    const [a, b] = await Promise.all([store.open(desc(tb), ref), store.open(desc(tb), ref)]);
    expect(a.toc).toBe(b.toc);
    expect(src.requests.length).toBe(2); // footer and TOC, once
    expect(swarm.events).toEqual([`join ${tb.blob.digest.slice(7, 11)}`]);
    expect(store.list()).toMatchObject([{ digest: tb.blob.digest, refs: 2 }]);
    expect(cache.list()[0]!.inUse).toBe(true);

    await a.release();
    await a.release(); // idempotent: does not take b's reference
    expect(store.list()).toMatchObject([{ refs: 1 }]);
    const f1 = tb.files.get('etc/f1')!;
    expect((await b.reader.read(tb.ino('etc/f1'), 0, f1.length)).equals(f1)).toBe(true);
    expect(() => a.reader).toThrow(/used after release/);

    await b.release();
    expect(store.list()).toEqual([]);
    expect(cache.list()[0]!.inUse).toBe(false);
    // left the swarm while the cache was still open, and only then closed it
    expect(swarm.events).toEqual([
      `join ${tb.blob.digest.slice(7, 11)}`,
      `leave ${tb.blob.digest.slice(7, 11)}`,
    ]);
    expect(swarm.cacheOpenAtLeave).toEqual([true]);
  });

  it('opens again after the last release, from the cache, and joins the swarm again', async () => {
    const { tb, src, store, swarm } = await setup();
    const a = await store.open(desc(tb), ref);
    await a.reader.read(tb.ino('usr/big1'), 0, 100_000);
    await a.release();
    const requests = src.requests.length;
    const b = await store.open(desc(tb), ref);
    expect(b.tocSource).toBe('cache');
    const big = tb.files.get('usr/big1')!;
    expect((await b.reader.read(tb.ino('usr/big1'), 0, 100_000)).equals(big.subarray(0, 100_000))).toBe(true);
    expect(src.requests.length).toBe(requests);
    expect(swarm.events.filter((e) => e.startsWith('join')).length).toBe(2);
    await b.release();
  });

  it('a failed open (TOC digest mismatch) releases the cache, joins nothing, and a later open tries again', async () => {
    const { tb, cache, store, swarm } = await setup();
    await expect(store.open(desc(tb, 'sha256:' + '0'.repeat(64)), ref)).rejects.toMatchObject({
      code: 'DIGEST_MISMATCH',
    });
    expect(store.list()).toEqual([]);
    expect(cache.list().every((b) => !b.inUse)).toBe(true);
    expect(swarm.events).toEqual([]);
    const l = await store.open(desc(tb), ref);
    expect(l.toc.blockCount).toBe(tb.toc.blockCount);
    await l.release();
  });

  it("one caller's abort stops only its own wait, not the open others share", async () => {
    const { tb, src, store } = await setup();
    const slow = gate();
    src.gate = slow.promise;
    const ac = new AbortController();
    const first = store.open(desc(tb), ref, ac.signal);
    const second = store.open(desc(tb), ref);
    ac.abort();
    await expect(first).rejects.toMatchObject({ code: 'ABORTED' });
    slow.open();
    const l = await second;
    expect(store.list()).toMatchObject([{ refs: 1 }]);
    await l.release();
    expect(store.list()).toEqual([]);
  });

  it('an open during the last release waits for it and gets a fresh layer', async () => {
    const { tb, store, swarm } = await setup();
    const a = await store.open(desc(tb), ref);
    const closing = a.release();
    const b = await store.open(desc(tb), ref);
    await closing;
    expect(b.released).toBe(false);
    expect((await b.reader.read(tb.ino('etc/f0'), 0, 10)).length).toBe(10);
    expect(swarm.events.map((e) => e.split(' ')[0])).toEqual(['join', 'leave', 'join']);
    await b.release();
  });

  it("readToc gives a layer's verified TOC without opening the layer or joining the swarm", async () => {
    const { tb, src, cache, store, swarm } = await setup();
    const toc = await store.readToc(desc(tb), ref);
    expect(toc.blockCount).toBe(tb.toc.blockCount);
    expect(src.requests.length).toBe(2); // footer and TOC
    expect(store.list()).toEqual([]);
    expect(swarm.events).toEqual([]);
    expect(cache.list()[0]!.inUse).toBe(false);
    // cached now: a second read and a later open need no source
    await store.readToc(desc(tb), ref);
    const l = await store.open(desc(tb), ref);
    expect(l.tocSource).toBe('cache');
    expect(src.requests.length).toBe(2);
    // an open layer's own TOC
    expect(await store.readToc(desc(tb), ref)).toBe(l.toc);
    await l.release();
    await expect(store.readToc(desc(tb, 'sha256:' + '0'.repeat(64)), ref)).rejects.toMatchObject({
      code: 'DIGEST_MISMATCH',
    });
  });

  it("a pull's warm-up: concurrent readTocs and an open during them read the TOC once, in one request", async () => {
    const { tb, src, store } = await setup();
    const g = gate();
    src.gate = g.promise;
    const d = { ...desc(tb), tocOffset: tb.toc.storedDataLength };
    const first = store.readToc(d, ref);
    const second = store.readToc(d, ref);
    const opening = store.open(d, ref);
    await new Promise((r) => setImmediate(r));
    g.open();
    const [a, b, layer] = await Promise.all([first, second, opening]);
    // one range read (TOC and footer, from the annotation's offset), one decode shared by all three
    expect(src.requests).toEqual([{ offset: d.tocOffset, length: tb.blob.size - d.tocOffset }]);
    expect(b).toBe(a);
    expect(layer.toc).toBe(a);
    await layer.release();
    // a different TOC digest is not served by that read
    await expect(store.readToc(desc(tb, 'sha256:' + '0'.repeat(64)), ref)).rejects.toMatchObject({
      code: 'DIGEST_MISMATCH',
    });
  });

  it('an open of a blob the cache holds nothing of reads its TOC in one request and keeps it', async () => {
    const { tb, src, store } = await setup();
    const d = { ...desc(tb), tocOffset: tb.toc.storedDataLength };
    const layer = await store.open(d, ref);
    expect(layer.tocSource).toBe('remote');
    expect(src.requests.length).toBe(1);
    await layer.release();
    const again = await store.open(d, ref);
    expect(again.tocSource).toBe('cache');
    expect(src.requests.length).toBe(1);
    await again.release();
  });

  it('close() closes every layer, whoever holds it', async () => {
    const { tb, src, store, swarm } = await setup();
    const a = await store.open(desc(tb), ref);
    src.gate = gate().promise; // fill never finishes on its own
    a.startFill();
    await store.close();
    expect(store.list()).toEqual([]);
    expect(swarm.cacheOpenAtLeave).toEqual([true]);
    await expect(a.whenComplete()).rejects.toMatchObject({ code: 'ABORTED' });
    await a.release(); // after close: harmless
    await expect(store.open(desc(tb), ref)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
  });
});
