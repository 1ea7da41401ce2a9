/**
 * The P2P tier across hosts: a registry host, one seed and three node hosts, each its own network namespace
 * on a bridge with tc-shaped links (registry 40 Mbit/s, others 20 Mbit/s). A generated 16 MiB image is
 * converted and pushed inside the registry's namespace (over its loopback, off the link); the three nodes
 * run `dfnode preheat` at once. Asserts: every node's cache hashes to the blob digest, the registry served
 * each block about once (bytes of blob responses in its access log), nodes got their bytes from peers and
 * the seed, and from the registry only runs the seed handed back, and most of them from each other (the
 * seed sent each block about once).
 * Needs root, iproute2/tc, docker-registry and curl; skips locally with a printed reason, never in CI.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { cliPath } from '../helpers/cli.js';
import { P2pCluster, requireNetns } from '../helpers/netns-topology.js';

const req = requireNetns(['docker-registry', 'curl']);
const NODES = 3;

// Default seed/peer timeouts: they grow with the request size (src/p2p/transfer-timeout.ts), so 4 MiB runs
// over the shared 20 Mbit/s links here do not fall back to the registry.
const ENV = {
  DFNODE_P2P_ANNOUNCE_INTERVAL_MS: '200',
};

describe.skipIf(req.skip)('P2P across network namespaces with shaped links', () => {
  let work: string;
  let cluster: P2pCluster | undefined;

  beforeAll(async () => {
    cliPath('dfnode');
    await mkdir(join(REPO_ROOT, '.tmp'), { recursive: true });
    work = await mkdtemp(join(REPO_ROOT, '.tmp', 'p2p-netns-'));
    cluster = await P2pCluster.create({
      nodes: NODES,
      hostMbit: 20,
      registryMbit: 40,
      image: { bytes: 16 * 1024 * 1024, files: 3, incompressible: 0.75, seed: 'p2p-netns-test' },
      workDir: work,
    });
  });

  afterAll(async () => {
    await cluster?.destroy();
    if (work) await rm(work, { recursive: true, force: true });
  });

  it(`${NODES} nodes preheat at once: caches verify, registry once per block, bytes from peers and seed`, async () => {
    const c = cluster!;
    const size = c.imageBytes;
    await c.startSeed(ENV);
    const results = await c.preheat(c.nodes, ENV);
    for (const r of results) expect(await c.cacheVerifies(r.cacheDir), `${r.host} cache`).toBe(true);
    // the access log is read as it is written: give the last lines a moment
    await new Promise((r) => setTimeout(r, 500));
    const served = c.registry.blobBytes();
    const byClient = c.registry.blobBytesByClient();
    const total = (k: string) => results.reduce((a, r) => a + (r.bySource[k] ?? 0), 0);
    console.log(
      `p2p netns x${NODES}: blob ${size} B; registry served ${(served / size).toFixed(2)}x ` +
        `(seed ${byClient.get(c.seedHost.ip) ?? 0} B); nodes got peer ${total('peer')} B, seed ${total('seed')} B, ` +
        `registry ${total('registry')} B; times ${results.map((r) => r.ms).join(', ')} ms`,
    );
    // each block left the registry about once: to the seed, or to a node for a run the seed handed back
    // while its own (20 Mbit/s) link to the registry (40 Mbit/s) was full
    expect(served).toBeLessThanOrEqual(1.1 * size);
    for (const r of results)
      if ((r.bySource.registry ?? 0) > 0)
        expect(r.fill?.originRuns ?? 0, `${r.host}: runs handed back`).toBeGreaterThan(0);
    const toNodes = c.nodes.reduce((a, n) => a + (byClient.get(n.ip) ?? 0), 0);
    expect(toNodes).toBeLessThanOrEqual(1.05 * size);
    // nodes got their bytes through the P2P tier, and the rest only from runs handed back
    expect(total('peer') + total('seed') + total('registry')).toBeGreaterThanOrEqual(0.95 * NODES * size);
    expect(total('registry')).toBeLessThanOrEqual(size);
    // most of them from each other: the seed's upload carried each block about once
    expect(total('peer')).toBeGreaterThan(total('seed'));
    expect(total('seed')).toBeLessThanOrEqual(1.5 * size);
    await c.stopAll();
  });
});
