/**
 * The node's side of a seed's hand-back: a real P2pNode fills a blob through a real Seed whose registry link
 * counts as full. Runs the seed hands back are fetched from the registry by the node itself (and the seed's
 * copy then takes them from the node); a node that cannot reach the registry asks the seed again without
 * offering (origin=1), and the seed sends everything. Real block servers, tracker and HTTP on loopback; the
 * registries (the seed's and the node's) are in memory and record what they serve.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { loadConfig } from '../../src/config.js';
import { DfError } from '../../src/errors.js';
import { FetchStats } from '../../src/fetch/fetch-stats.js';
import { FetchScheduler } from '../../src/fetch/scheduler.js';
import { UnitFetcher } from '../../src/fetch/unit-fetcher.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';
import { FakeSource } from '../fetch/helpers.js';
import { seedComplete, seedHarness } from './seed-harness.js';

const TOKEN = 'node-hand-back-token';
const { setup, startSeed, cleanups } = seedHarness(TOKEN);

async function fillThroughSeed(registryFails: boolean) {
  const { dir, tb } = await setup();
  const layout = new UnitLayout(tb.toc, tb.blob.size);
  // with a failing registry, no cap on runs handed back: only the node's switch stops them
  const handBack = registryFails ? { fullAtBytes: 0, maxOutstanding: 1000 } : { fullAtBytes: 0 };
  const s = await startSeed(dir, tb, ['good.example'], { seedFill: true, handBack });
  const node = new P2pNode({
    config: loadConfig({
      env: {},
      flags: {
        p2p: { seeds: [s.blocks], clusterToken: TOKEN, listen: '127.0.0.1:0', announceIntervalMs: 100 },
      },
    }),
  });
  cleanups.push(() => node.close());
  await node.start();
  // the node's own way to the registry
  const registry = new FakeSource(tb.bytes, 'registry');
  if (registryFails) {
    registry.failNext = 1_000_000;
    registry.failWith = () => new DfError('UNAUTHORIZED', 'registry: 401 (this node has no credentials)');
  }
  const cache = await BlobCache.open({
    dir: join(dir, 'node-cache'),
    digest: tb.blob.digest,
    size: tb.blob.size,
  });
  await cache.setLayout(tb.toc.blockCount, layout.offset(tb.toc.blockCount));
  cleanups.push(() => cache.close());
  const fetcher = new UnitFetcher({
    blob: tb.blob,
    toc: tb.toc,
    cache,
    sources: node.chain('good.example/x', registry),
    stats: new FetchStats(),
    scheduler: new FetchScheduler({ concurrency: 12, maxFill: 6 }),
    // runs of a few blocks (the blob is ~600 KiB): most leave out the TOC unit, which the seed holds
    options: { retries: 2, retryBaseMs: 10, retryMaxMs: 50, maxRunBytes: 64 * 1024 },
  });
  cleanups.push(async () => fetcher.close());
  const member = node.join({ blob: tb.blob, toc: tb.toc, cache });
  cleanups.push(() => member.leave());
  await member.announced;
  await member.planner!(fetcher, AbortSignal.timeout(60_000));
  return { s, tb, layout, cache, registry, fill: member.fillCounters! };
}

describe('a node and a seed that hands runs back', () => {
  it('fetches handed-back runs from the registry itself; the seed copies them from the node', async () => {
    const { s, tb, layout, cache, registry, fill } = await fillThroughSeed(false);
    for (let u = 0; u < layout.units - 1; u++) expect(cache.has(u), `unit ${u}`).toBe(true);
    expect(fill.originRuns).toBeGreaterThan(0);
    expect(registry.requests.length).toBe(fill.originRuns);
    // the seed's copy completes without asking its registry for what the node took from its own
    await seedComplete(s.seed, tb.blob.digest, layout.units);
    const seedRanges = s.calls
      .filter((c) => c.startsWith('GET '))
      .map((c) => c.split(' ')[2]!.split('+').map(Number) as [number, number]);
    for (const r of registry.requests) {
      const overlap = seedRanges.some(([o, n]) => o < r.offset + r.length && o + n > r.offset);
      expect(overlap, `the seed's registry sent ${r.offset}+${r.length} too`).toBe(false);
    }
  });

  it('asks the seed again, without offering, when its own registry fetch fails', async () => {
    const { s, layout, cache, registry, fill } = await fillThroughSeed(true);
    for (let u = 0; u < layout.units - 1; u++) expect(cache.has(u), `unit ${u}`).toBe(true);
    // one handed-back run failed at the registry, then the node stopped offering: the seed sent the rest
    expect(fill.originRuns).toBe(0);
    expect(registry.requests.length).toBeGreaterThan(0);
    expect(fill.seedRuns).toBeGreaterThan(0);
    // each handed-back run that failed at the registry counts once: those already out when the first failed
    // (four seed requests at once, alone)
    expect(fill.failed).toBeGreaterThanOrEqual(1);
    expect(fill.failed).toBeLessThanOrEqual(4);
    expect(s.seed.metricsCounters.handedBack).toBe(fill.failed);
  });
});
