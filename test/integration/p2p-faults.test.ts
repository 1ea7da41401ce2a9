/**
 * Faults of the P2P tier on loopback (real docker-registry, seeds and `dfnode preheat` processes, rates
 * limited so that transfers last a few seconds): a node SIGKILLed while others fetch from it does not stall
 * them; a seed SIGKILLed mid-transfer is replaced by the next seed in rendezvous order (blocks and tracker).
 * Every surviving node must finish with caches that match the blob digests. Needs docker-registry, skopeo
 * and umoci (fixture); skips locally with a printed reason, never in CI.
 */
import {
  dfnodeProc as spawnDfnode,
  preheatArgs,
  startSeedProc,
  waitLine,
  type Proc,
  type SeedProc,
} from '../helpers/dfnode-proc.js';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  dfbLayers,
  nodeTempDir,
  pushAndConvert,
  expectCacheMatches,
  type DfbManifestLayer,
  type ImageSet,
} from '../helpers/node.js';
import { startRangeProxy, type RangeProxy } from '../helpers/range-proxy.js';
import { freePort } from '../helpers/registry.js';
import { requireTools } from '../helpers/require.js';
import { rankSeeds } from '../../src/p2p/rendezvous.js';
import { TrackerClient } from '../../src/p2p/tracker-service.js';

const req = requireTools(['docker-registry', 'skopeo', 'umoci']);
const TOKEN = 'p2p-faults-cluster-token';

const dfnodeProc = (args: string[], env: NodeJS.ProcessEnv = {}): Proc =>
  spawnDfnode(args, { DFNODE_P2P_CLUSTER_TOKEN: TOKEN, ...env });

/** Bytes allocated on disk for `digest` in a cache dir (its data file is sparse until complete). */
async function cachedBytes(cacheDir: string, digest: string): Promise<number> {
  try {
    const st = await stat(join(cacheDir, 'blobs', 'sha256', digest.slice(7), 'data'));
    return st.blocks * 512;
  } catch {
    return 0;
  }
}

async function until(what: string, cond: () => Promise<boolean>, procs: Proc[], ms = 100_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    for (const p of procs)
      if (p.child.exitCode !== null)
        throw new Error(`waiting for ${what}: a process exited:\n${p.out()}\n${p.err()}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.skipIf(req.skip)('P2P faults on loopback: killed nodes and seeds', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let proxy: RangeProxy;
  let ref: string;
  let layers: DfbManifestLayer[];
  let big: DfbManifestLayer;
  const procs: Proc[] = [];
  let n = 0;

  /** A seed on a free port (its tracker on the next one), uploads limited so that transfers take a while. */
  async function startSeed(name: string, env: NodeJS.ProcessEnv = {}): Promise<SeedProc> {
    const s = await startSeedProc(tmp.dir, name, [], { DFNODE_P2P_CLUSTER_TOKEN: TOKEN, ...env });
    procs.push(s.proc);
    return s;
  }

  function preheatNode(
    seeds: string[],
    env: NodeJS.ProcessEnv,
    extra: string[] = [],
  ): { proc: Proc; cache: string } {
    n++;
    const proc = dfnodeProc([...preheatArgs(tmp.dir, n, seeds, extra), ref], env);
    procs.push(proc);
    return { proc, cache: join(tmp.dir, `cache-${n}`) };
  }

  const cacheMatches = (cacheDir: string) => expectCacheMatches(cacheDir, layers);

  beforeAll(async () => {
    tmp = await nodeTempDir('p2p-faults-');
    images = await pushAndConvert(['debian'], tmp.dir);
    layers = await dfbLayers(images.reg.url, images.dfb.debian!);
    big = layers.reduce((a, l) => (l.size > a.size ? l : a));
    proxy = await startRangeProxy(images.reg.host);
    ref = images.dfb.debian!.replace(images.reg.host, proxy.host);
  });

  afterAll(async () => {
    for (const p of procs) await p.stop().catch(() => undefined);
    await proxy?.stop().catch(() => undefined);
    await images?.reg.stop().catch(() => undefined);
    await tmp?.cleanup();
  });

  it('a node SIGKILLed while the others fetch from it does not stall them', async () => {
    const seed = await startSeed('seed-k', { DFNODE_P2P_UPLOAD_RATE: '8M' });
    // downloads limited per node so that the victim dies with part of the image, while others read from it
    const env = { DFNODE_P2P_DOWNLOAD_RATE: '4M', DFNODE_P2P_UPLOAD_RATE: '8M' };
    const nodes = [0, 1, 2].map(() => preheatNode([seed.addr], env, ['--serve']));
    const [victim, ...rest] = nodes;
    const third = Math.floor(big.size / 3);
    await until(
      'the victim to hold a third of the big layer',
      async () => (await cachedBytes(victim!.cache, big.digest)) >= third,
      nodes.map((x) => x.proc),
    );
    expect(victim!.proc.out()).not.toMatch(/^\{/m);
    victim!.proc.child.kill('SIGKILL');
    await victim!.proc.exited;
    for (const r of rest) {
      const line = await waitLine(r.proc, /^\{.*\}$/m);
      expect(JSON.parse(line).bytes).toBeGreaterThan(0);
      await cacheMatches(r.cache);
    }
    for (const r of rest) await r.proc.stop();
    await seed.proc.stop();
  });

  it('a seed SIGKILLed mid-transfer: the next seed in rendezvous order takes over, nodes complete', async () => {
    const seedEnv = { DFNODE_P2P_UPLOAD_RATE: '6M' };
    const a = await startSeed('seed-a', seedEnv);
    const metricsPort = await freePort();
    const b = await startSeed('seed-b', seedEnv);
    const seeds = [a.addr, b.addr];
    const order = rankSeeds(big.digest, seeds);
    const [first, next] = order[0] === a.addr ? [a, b] : [b, a];
    // generous timeouts: a slow (rate-limited) seed must not count as down; a killed one fails at once (RST)
    const env = { DFNODE_P2P_SEED_TIMEOUT_MS: '20000', DFNODE_FETCH_REQUEST_TIMEOUT_MS: '30000' };
    const nodes = [
      preheatNode(seeds, env, ['--serve', '--metrics-address', `127.0.0.1:${metricsPort}`]),
      preheatNode(seeds, env, ['--serve']),
    ];
    // the big layer goes to its first seed only while that seed is up
    const quarter = Math.floor(big.size / 4);
    await until(
      'the nodes to hold a quarter of the big layer',
      async () => (await cachedBytes(nodes[0]!.cache, big.digest)) >= quarter,
      nodes.map((x) => x.proc),
    );
    first.proc.child.kill('SIGKILL');
    await first.proc.exited;
    for (const x of nodes) {
      const r = JSON.parse(await waitLine(x.proc, /^\{.*\}$/m)) as { bySource: Record<string, number> };
      expect(r.bySource.seed).toBeGreaterThan(0);
      await cacheMatches(x.cache);
    }
    // the next seed served the big layer (it fetched it from the registry itself) ...
    expect(await cachedBytes(next.cache, big.digest)).toBeGreaterThan(0);
    // ... and tracks its swarm now: the nodes announced to it
    const port = Number(next.addr.split(':')[1]);
    const t = new TrackerClient(`127.0.0.1:${port + 1}`, TOKEN, 5000);
    try {
      const lk = await t.lookup({ blob: big.digest, peer_id: 'probe', want: [0] });
      expect(lk.holders.length).toBeGreaterThan(0);
    } finally {
      t.close();
    }
    // the node's metrics endpoint shows the failover
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const seedsDown = Number(/^dfnode_seeds_down_total (\d+)/m.exec(text)?.[1] ?? 0);
    expect(seedsDown).toBeGreaterThan(0);
    expect(text).toMatch(/^dfnode_bytes_total\{source="seed"\} [1-9]/m);
    expect(text).toMatch(/^dfnode_tracker_answers_total\{result="(holders|empty)"\} [1-9]/m);
    for (const x of nodes) await x.proc.stop();
    await next.proc.stop();
  });
});
