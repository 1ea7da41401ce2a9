/**
 * Hand-back: while a seed's registry link is full, a node's planned run for blocks the seed does not have
 * is handed back (409 with x-dfnode-take-from: registry); the tracker holds those blocks for that node, so
 * that another node's planned request for them is deferred, and the seed's own copy takes them from the
 * node once it announces them, not from the registry a second time. Real Seed, block servers and HTTP over
 * loopback; the registry is in memory and records every range it serves.
 */
import { describe, expect, it } from 'vitest';
import { NodeMetrics } from '../../src/daemon/metrics.js';
import { DfError } from '../../src/errors.js';
import { isDeferred, isHandedBack } from '../../src/fetch/types.js';
import { BlockServer } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import type { TrackerState } from '../../src/p2p/tracker-state.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';
import type { TestBlob } from '../helpers/dfb.js';
import { seedComplete, seedHarness } from './seed-harness.js';

const TOKEN = 'seed-hand-back-token';
const { setup, startSeed, cleanups } = seedHarness(TOKEN);

function announce(
  tracker: TrackerState,
  digest: string,
  units: number,
  peer: string,
  address: string,
  held: number[] = [],
) {
  const bitmap = new Uint8Array(Math.ceil(units / 8));
  for (const u of held) bitmap[u >> 3]! |= 1 << (u & 7);
  tracker.announce({
    blob: digest,
    units,
    peer_id: peer,
    address,
    zone: '',
    load: 0,
    full: true,
    bitmap,
    added: [],
    leave: false,
    failed_peers: [],
  });
}

/** Registry ranges as [offset, end) from the harness's call log ("GET host offset+length"). */
function registryRanges(calls: string[]): [number, number][] {
  return calls
    .filter((c) => c.startsWith('GET '))
    .map((c) => {
      const [o, n] = c.split(' ')[2]!.split('+').map(Number);
      return [o!, o! + n!];
    });
}

async function failure(p: Promise<unknown>): Promise<DfError> {
  try {
    await p;
  } catch (err) {
    return DfError.from(err);
  }
  throw new Error('expected the request to fail');
}

/** A node's block server serving the test blob through `read`; returns its address. */
async function nodeServer(size: number, read: (o: number, l: number) => Promise<Buffer>): Promise<string> {
  const server = new BlockServer({
    clusterToken: TOKEN,
    provider: { get: () => Promise.resolve({ size, read }) },
  });
  const address = await server.listen('127.0.0.1:0');
  cleanups.push(() => server.close());
  return address;
}

/** A node's request to the seed for units first..last of the test blob (planned, origin=1 by default). */
function askRun(
  c: HttpBlockClient,
  seed: string,
  tb: TestBlob,
  layout: UnitLayout,
  [first, last]: readonly [number, number],
  extra: Record<string, string> = { defer: '1', origin: '1' },
): Promise<Buffer> {
  const offset = layout.offset(first);
  return c.get(seed, tb.blob.digest, offset, layout.offset(last + 1) - offset, AbortSignal.timeout(10_000), {
    repo: 'good.example/x',
    size: String(tb.blob.size),
    ...extra,
  });
}

describe('seed hand-back', () => {
  it('hands a planned run back while its registry link is full, defers others, and copies it from the node', async () => {
    const { dir, tb } = await setup();
    const layout = new UnitLayout(tb.toc, tb.blob.size);
    // the registry link counts as full at any load
    const s = await startSeed(dir, tb, ['good.example'], { seedFill: true, handBack: { fullAtBytes: 0 } });
    // node A serves what it holds from its own block server (it fetched the run from the registry itself)
    const servedByA: string[] = [];
    const addrA = await nodeServer(tb.blob.size, (o, l) => {
      servedByA.push(`${o}+${l}`);
      return Promise.resolve(tb.bytes.subarray(o, o + l));
    });
    const digest = tb.blob.digest;
    announce(s.seed.tracker, digest, layout.units, 'node-a', addrA);
    announce(s.seed.tracker, digest, layout.units, 'node-b', '127.0.0.1:9');
    const a = new HttpBlockClient(TOKEN, undefined, 'node-a');
    const b = new HttpBlockClient(TOKEN, undefined, 'node-b');
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    const ask = (c: HttpBlockClient, first: number, last: number, extra: Record<string, string>) =>
      askRun(c, s.blocks, tb, layout, [first, last], extra);

    // node A's planned run (it can fetch from the registry: origin=1) is handed back; the request opens the
    // blob and starts the seed's fill
    const [first, last] = [20, 24];
    const handed = [layout.offset(first), layout.offset(last + 1)] as const;
    const overlapsHanded = ([o, end]: [number, number]) => o < handed[1] && end > handed[0];
    const e = await failure(ask(a, first, last, { defer: '1', origin: '1' }));
    expect(isHandedBack(e), e.message).toBe(true);
    expect(e.message).toContain('handed back');
    expect(s.seed.metricsCounters.handedBack).toBe(1);
    const metrics = new NodeMetrics({ defaultMetrics: false });
    metrics.publishSeed(s.seed.metricsCounters);
    expect(await metrics.registry.metrics()).toContain('dfnode_peer_requests_total{result="handed_back"} 1');
    // the tracker holds the units for node A: node B's planned request for them is deferred ...
    const d = await failure(ask(b, first, first + 1, { defer: '1', origin: '1' }));
    expect(isDeferred(d), d.message).toBe(true);
    // ... and node B's lookup names them as on their way to node A
    const answer = s.seed.tracker.lookup({
      blob: digest,
      peer_id: 'node-b',
      zone: '',
      want: [first],
      max_peers: 8,
    });
    const pendingA = answer.holders.find((h) => h.peer_id === 'node-a')?.pending;
    expect(pendingA !== undefined && (pendingA[first >> 3]! & (1 << (first & 7))) !== 0).toBe(true);

    // the seed's fill takes every other unit from the registry and waits for node A's
    await new Promise((r) => setTimeout(r, 1000));
    expect(registryRanges(s.calls).some(overlapsHanded)).toBe(false);
    expect(servedByA).toEqual([]);
    // node A announces the run: the seed's copy takes it from node A, and completes
    const run = Array.from({ length: last - first + 1 }, (_, i) => first + i);
    announce(s.seed.tracker, digest, layout.units, 'node-a', addrA, run);
    await seedComplete(s.seed, digest, layout.units);
    expect(servedByA.length).toBeGreaterThan(0);
    for (const r of servedByA) {
      const [o, n] = r.split('+').map(Number);
      expect(o! >= handed[0] && o! + n! <= handed[1], `node A served ${r}`).toBe(true);
    }
    // the registry never sent the handed-back units to the seed
    expect(registryRanges(s.calls).some(overlapsHanded)).toBe(false);
  });

  it('serves the run itself to a node that cannot take it back, to a read, and when its link is not full', async () => {
    const { dir, tb } = await setup();
    const layout = new UnitLayout(tb.toc, tb.blob.size);
    const s = await startSeed(dir, tb, ['good.example'], { handBack: { fullAtBytes: 0 } });
    announce(s.seed.tracker, tb.blob.digest, layout.units, 'node-a', '127.0.0.1:9');
    const a = new HttpBlockClient(TOKEN, undefined, 'node-a');
    cleanups.push(() => a.close());
    const get = (first: number, extra: Record<string, string>) => {
      const off = layout.offset(first);
      const len = layout.offset(first + 2) - off;
      return a
        .get(s.blocks, tb.blob.digest, off, len, AbortSignal.timeout(10_000), {
          repo: 'good.example/x',
          size: String(tb.blob.size),
          ...extra,
        })
        .then((got) => got.equals(tb.bytes.subarray(off, off + len)));
    };
    // an older node (no origin=1), and a read a container waits on (not planned)
    expect(await get(3, { defer: '1' })).toBe(true);
    expect(await get(6, { origin: '1' })).toBe(true);
    expect(s.seed.metricsCounters.handedBack).toBe(0);
    await s.close();
    // a seed whose registry link is not full
    const { dir: dir2, tb: tb2 } = await setup();
    const s2 = await startSeed(dir2, tb2, ['good.example'], { handBack: { fullAtBytes: 64 * 1024 * 1024 } });
    const l2 = new UnitLayout(tb2.toc, tb2.blob.size);
    announce(s2.seed.tracker, tb2.blob.digest, l2.units, 'node-a', '127.0.0.1:9');
    const off = l2.offset(10);
    const len = l2.offset(12) - off;
    const got = await a.get(s2.blocks, tb2.blob.digest, off, len, AbortSignal.timeout(10_000), {
      repo: 'good.example/x',
      size: String(tb2.blob.size),
      defer: '1',
      origin: '1',
    });
    expect(got.equals(tb2.bytes.subarray(off, off + len))).toBe(true);
    expect(s2.seed.metricsCounters.handedBack).toBe(0);
  });

  it("copies handed-back runs from nodes one at a time: a node's upload still serves its swarm", async () => {
    const { dir, tb } = await setup();
    const layout = new UnitLayout(tb.toc, tb.blob.size);
    const s = await startSeed(dir, tb, ['good.example'], { seedFill: true, handBack: { fullAtBytes: 0 } });
    let active = 0;
    let most = 0;
    const servedByA: string[] = [];
    const addrA = await nodeServer(tb.blob.size, async (o, l) => {
      servedByA.push(`${o}+${l}`);
      most = Math.max(most, ++active);
      await new Promise((r) => setTimeout(r, 200));
      active--;
      return tb.bytes.subarray(o, o + l);
    });
    const digest = tb.blob.digest;
    announce(s.seed.tracker, digest, layout.units, 'node-a', addrA);
    const a = new HttpBlockClient(TOKEN, undefined, 'node-a');
    cleanups.push(() => a.close());
    // three runs handed back to node A, apart from each other, asked at once: the first request opens the
    // blob, and the seed's fill starts only after the three are answered
    const runs = [
      [8, 9],
      [20, 21],
      [32, 33],
    ] as const;
    const answers = await Promise.all(runs.map((run) => failure(askRun(a, s.blocks, tb, layout, run))));
    for (const e of answers) expect(isHandedBack(e), e.message).toBe(true);
    // node A announces all three at once: the seed's copy takes them from A, one run at a time
    const held = runs.flatMap(([f, l]) => Array.from({ length: l - f + 1 }, (_, i) => f + i));
    announce(s.seed.tracker, digest, layout.units, 'node-a', addrA, held);
    await seedComplete(s.seed, digest, layout.units);
    expect(servedByA.length).toBeGreaterThanOrEqual(runs.length);
    expect(most).toBe(1);
  });

  it("reports a node that served the seed's copy a bad block, and takes the run from the registry", async () => {
    const { dir, tb } = await setup();
    const layout = new UnitLayout(tb.toc, tb.blob.size);
    const s = await startSeed(dir, tb, ['good.example'], { seedFill: true, handBack: { fullAtBytes: 0 } });
    // node A lies: every byte it serves is flipped
    const addrA = await nodeServer(tb.blob.size, (o, l) =>
      Promise.resolve(Buffer.from(tb.bytes.subarray(o, o + l).map((b) => b ^ 0xff))),
    );
    const digest = tb.blob.digest;
    announce(s.seed.tracker, digest, layout.units, 'node-a', addrA);
    const a = new HttpBlockClient(TOKEN, undefined, 'node-a');
    cleanups.push(() => a.close());
    const [first, last] = [20, 22];
    const e = await failure(askRun(a, s.blocks, tb, layout, [first, last]));
    expect(isHandedBack(e), e.message).toBe(true);
    const failuresOfA = () =>
      s.seed.tracker
        .lookup({ blob: digest, peer_id: 'node-b', zone: '', want: [first], max_peers: 8 })
        .holders.find((h) => h.peer_id === 'node-a')?.failures ?? 0;
    expect(failuresOfA()).toBe(0);
    const handed = [layout.offset(first), layout.offset(last + 1)] as const;
    const overlapsHanded = ([o, end]: [number, number]) => o < handed[1] && end > handed[0];
    announce(s.seed.tracker, digest, layout.units, 'node-a', addrA, [20, 21, 22]);
    await seedComplete(s.seed, digest, layout.units);
    // the copy verified node A's bytes, refused them, reported node A and took the run from the registry
    expect(failuresOfA()).toBeGreaterThanOrEqual(1);
    expect(registryRanges(s.calls).some(overlapsHanded)).toBe(true);
  });
});
