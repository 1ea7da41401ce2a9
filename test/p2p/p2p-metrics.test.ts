import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import type { Toc } from '../../src/blob/toc.js';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { NodeMetrics } from '../../src/daemon/metrics.js';
import { loadConfig } from '../../src/config.js';
import {
  isSourceUnavailable,
  Priority,
  type BlobRef,
  type BlockSource,
  type FetchContext,
} from '../../src/fetch/types.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { RegistryFallback } from '../../src/p2p/registry-fallback.js';

const blob: BlobRef = { digest: 'sha256:' + 'ab'.repeat(32), size: 1 << 20 };

describe('registry fallback reasons', () => {
  it('gives each registry request the reason noted for an overlapping range, once', () => {
    const f = new RegistryFallback();
    f.note(blob.digest, 0, 4096, 'seed_down');
    f.note(blob.digest, 8192, 4096, 'verification');
    expect(f.take(blob.digest, 8192, 100)).toBe('verification');
    expect(f.take(blob.digest, 0, 4096)).toBe('seed_down');
    expect(f.take(blob.digest, 0, 4096)).toBe('retry');
  });
  it('forgets a range the seed tier served after all', () => {
    const f = new RegistryFallback();
    f.note(blob.digest, 0, 4096, 'verification');
    f.clear(blob.digest, 1000, 10);
    expect(f.take(blob.digest, 0, 4096)).toBe('retry');
  });
});

/** A node whose only seed is down: port 1 on loopback refuses connections. */
function nodeWithSeedDown(): P2pNode {
  const config = loadConfig({
    env: {},
    flags: { p2p: { seeds: ['127.0.0.1:1'], clusterToken: 't', listen: '127.0.0.1:0' } },
  });
  return new P2pNode({ config });
}

describe('P2P metrics wiring', () => {
  it('a range that no seed serves goes to the registry as seed_down, and the endpoint shows the P2P counters', async () => {
    // port 1 on loopback refuses connections: the only seed is down
    const p2p = nodeWithSeedDown();
    let asked = 0;
    const registry: BlockSource = {
      kind: 'registry',
      name: 'registry',
      fetch: async (_b, _o, length) => {
        asked++;
        return Buffer.alloc(length);
      },
    };
    try {
      const [peers, seed, reg] = p2p.chain('example.com/repo', registry);
      const signal = new AbortController().signal;
      // the fetcher's order: no peer holds it, the seed is down, then the registry at once
      await expect(peers!.fetch(blob, 0, 4096, signal)).rejects.toSatisfy(isSourceUnavailable);
      await expect(seed!.fetch(blob, 0, 4096, signal)).rejects.toSatisfy(isSourceUnavailable);
      expect((await reg!.fetch(blob, 0, 4096, signal)).length).toBe(4096);
      // the registry failed before: a retry
      await reg!.fetch(blob, 0, 4096, signal);
      expect(asked).toBe(2);
      expect(p2p.counters.registryFetches).toEqual({ seed_down: 1, retry: 1 });
      expect(p2p.counters.seedsDown).toBe(1);
      p2p.isolation.fail('peer-a', 'TIMEOUT');
      p2p.isolation.fail('peer-b', 'bad block');
      p2p.counters.peersSlow = 2;
      p2p.counters.trackerAnswers = 3;
      p2p.counters.trackerEmpty = 1;
      p2p.counters.trackerErrors = 2;

      const m = new NodeMetrics({ defaultMetrics: false });
      m.onScrape(() => m.publishP2p(p2p.counters));
      const text = await m.text();
      expect(text).toContain('dfnode_registry_fetches_total{reason="seed_down"} 1');
      expect(text).toContain('dfnode_registry_fetches_total{reason="retry"} 1');
      expect(text).toContain('dfnode_peers_isolated_total{reason="timeout"} 1');
      expect(text).toContain('dfnode_peers_isolated_total{reason="bad_block"} 1');
      expect(text).toContain('dfnode_peers_slow_total 2');
      expect(text).toContain('dfnode_seeds_down_total 1');
      expect(text).toContain('dfnode_tracker_answers_total{result="holders"} 2');
      expect(text).toContain('dfnode_tracker_answers_total{result="empty"} 1');
      expect(text).toContain('dfnode_tracker_answers_total{result="error"} 2');
      // scraping again adds nothing (deltas)
      expect(await m.text()).toContain('dfnode_registry_fetches_total{reason="seed_down"} 1');
    } finally {
      await p2p.close();
    }
  });

  it('the registry wrappers (rate limit, fallback count) pass the fetch context on', async () => {
    const p2p = nodeWithSeedDown();
    const seen: Array<FetchContext | undefined> = [];
    const registry: BlockSource = {
      kind: 'registry',
      name: 'registry',
      fetch: async (_b, _o, length, _s, ctx) => {
        seen.push(ctx);
        return Buffer.alloc(length);
      },
    };
    try {
      const reg = p2p.chain('example.com/repo', registry).at(-1)!;
      const ctx: FetchContext = { priority: Priority.Fill, planned: true };
      await reg.fetch(blob, 0, 4096, new AbortController().signal, ctx);
      expect(seen).toEqual([ctx]);
    } finally {
      await p2p.close();
    }
  });

  it('a seed found down by its tracker (not by a block request) counts as down once, and its blocks are skipped', async () => {
    const p2p = nodeWithSeedDown();
    const toc = { blockCount: 4, blockOffset: (i: number) => i * 4096 } as unknown as Toc;
    const dir = await mkdtemp(join(tmpdir(), 'dfnode-p2p-metrics-'));
    const cache = await BlobCache.open({ dir, digest: blob.digest, size: blob.size });
    try {
      // joining announces to the blob's tracker on the seed, which refuses the connection
      const member = p2p.join({ blob, toc, cache });
      const deadline = Date.now() + 10_000;
      while (p2p.counters.seedsDown === 0 && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 10));
      expect(p2p.counters.seedsDown).toBe(1);
      expect(p2p.counters.trackerErrors).toBeGreaterThan(0);
      // the seed's block source skips it while isolated: the registry next, as seed_down, no new count
      const [, seed] = p2p.chain('example.com/repo', {
        kind: 'registry',
        name: 'registry',
        fetch: async () => Buffer.alloc(0),
      });
      await expect(seed!.fetch(blob, 0, 4096, new AbortController().signal)).rejects.toSatisfy(
        isSourceUnavailable,
      );
      expect(p2p.counters.seedsDown).toBe(1);
      await member.leave();
    } finally {
      await p2p.close();
      await cache.close();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a seed reports its registry requests as seed_miss and its block server requests', async () => {
    const m = new NodeMetrics({ defaultMetrics: false });
    const c = {
      registryRequests: 5,
      bytes: { registry: 1000, cache: 0 },
      tracker: { announces: 0, lookups: 0, carriedLookups: 0 },
    };
    const s = { served: 7, unauthorized: 2 };
    m.onScrape(() => {
      m.publishSeed(c);
      m.publishBlockServer(s);
    });
    await m.text();
    c.registryRequests = 6;
    const text = await m.text();
    expect(text).toContain('dfnode_registry_fetches_total{reason="seed_miss"} 6');
    expect(text).toContain('dfnode_bytes_total{source="registry"} 1000');
    expect(text).toContain('dfnode_peer_requests_total{result="served"} 7');
    expect(text).toContain('dfnode_peer_requests_total{result="refused"} 2');
  });

  it("a node's fill runs refused for its upload slots are counted as busy", async () => {
    const m = new NodeMetrics({ defaultMetrics: false });
    const s = { served: 1, unauthorized: 0, deferred: 0, busy: 3 };
    m.onScrape(() => m.publishBlockServer(s));
    expect(await m.text()).toContain('dfnode_peer_requests_total{result="busy"} 3');
    s.busy = 5;
    expect(await m.text()).toContain('dfnode_peer_requests_total{result="busy"} 5');
  });
});
