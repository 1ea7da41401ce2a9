/**
 * The P2P tier over mutual TLS on loopback, end to end: a `dfnode seed` (TLS by flags) and `dfnode preheat`
 * nodes (TLS by DFNODE_P2P_TLS_* environment) with certificates from a throw-away cluster CA. Members get
 * every block from the seed and from each other, and their caches match the blob digests; a node without
 * TLS, and one with a certificate of another CA, get nothing from the cluster and go to the registry.
 * Needs openssl, docker-registry, skopeo and umoci (fixture); skips locally with a printed reason, never in CI.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dfnodeProc, preheatArgs, startSeedProc, waitLine, type Proc } from '../helpers/dfnode-proc.js';
import {
  dfbLayers,
  nodeTempDir,
  pushAndConvert,
  expectCacheMatches,
  type DfbManifestLayer,
  type ImageSet,
} from '../helpers/node.js';
import { requireTools } from '../helpers/require.js';
import { makeTestPki, type HostTls, type TestPki } from '../helpers/tls-certs.js';

const req = requireTools(['openssl', 'docker-registry', 'skopeo', 'umoci']);
const TOKEN = 'p2p-tls-test-cluster-token';

interface PreheatJson {
  bytes: number;
  bySource: Record<string, number>;
  /** What the P2P fill planner did (originRuns: runs a seed handed back, fetched from the registry). */
  fill?: Record<string, number>;
}

/** The node went to the registry only for runs a seed handed back (src/p2p/hand-back.ts), if at all. */
const viaP2p = (r: PreheatJson) => (r.bySource.registry ?? 0) === 0 || (r.fill?.originRuns ?? 0) > 0;

const tlsEnv = (h: HostTls): NodeJS.ProcessEnv => ({
  DFNODE_P2P_TLS_CERT: h.cert,
  DFNODE_P2P_TLS_KEY: h.key,
  DFNODE_P2P_TLS_CA: h.ca,
});

describe.skipIf(req.skip)('P2P over mutual TLS: seed and nodes on loopback', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let pki: TestPki;
  let images: ImageSet;
  let ref: string;
  let layers: DfbManifestLayer[];
  let seed: Proc;
  let seedAddr: string;
  const procs: Proc[] = [];
  let n = 0;

  const preheat = (env: NodeJS.ProcessEnv, extra: string[] = []) => {
    const i = ++n;
    const p = dfnodeProc([...preheatArgs(tmp.dir, i, [seedAddr], extra), ref], {
      DFNODE_P2P_CLUSTER_TOKEN: TOKEN,
      ...env,
    });
    procs.push(p);
    return { p, cache: join(tmp.dir, `cache-${i}`) };
  };

  const cacheMatches = (cacheDir: string) => expectCacheMatches(cacheDir, layers);

  beforeAll(async () => {
    tmp = await nodeTempDir('p2p-tls-');
    pki = await makeTestPki(tmp.dir);
    images = await pushAndConvert(['debian'], tmp.dir);
    layers = await dfbLayers(images.reg.url, images.dfb.debian!);
    ref = images.dfb.debian!;
    const sp = await startSeedProc(tmp.dir, 'seed', [
      '--cluster-token',
      TOKEN,
      '--p2p-tls-cert',
      pki.member.cert,
      '--p2p-tls-key',
      pki.member.key,
      '--p2p-tls-ca',
      pki.ca,
    ]);
    seed = sp.proc;
    seedAddr = sp.addr;
  });

  afterAll(async () => {
    for (const p of procs) await p.stop().catch(() => undefined);
    await seed?.stop().catch(() => undefined);
    await images?.reg.stop().catch(() => undefined);
    await tmp?.cleanup();
  });

  it('members preheat from the seed and from each other; caches match the blob digests', async () => {
    const size = layers.reduce((a, l) => a + l.size, 0);
    const first = preheat(tlsEnv(pki.member2), ['--serve']);
    const r1 = JSON.parse(await waitLine(first.p, /^\{.*\}$/m)) as PreheatJson;
    await cacheMatches(first.cache);
    // from the registry only runs the seed handed back (its registry link full), never for a TLS failure
    expect(viaP2p(r1)).toBe(true);
    const got = (r: PreheatJson) =>
      (r.bySource.seed ?? 0) + (r.bySource.peer ?? 0) + (r.bySource.registry ?? 0);
    expect(got(r1)).toBeGreaterThanOrEqual(size * 0.99);
    // the first node keeps serving: the second gets blocks from it (node to node over TLS) and the seed
    const second = preheat(tlsEnv(pki.member));
    const r2 = JSON.parse(await waitLine(second.p, /^\{.*\}$/m)) as PreheatJson;
    expect(await second.p.exited).toBe(0);
    await cacheMatches(second.cache);
    expect(viaP2p(r2)).toBe(true);
    expect(r2.bySource.peer ?? 0).toBeGreaterThan(0);
    await first.p.stop();
  });

  it('a node without TLS gets nothing from the cluster (the seed says why) and goes to the registry', async () => {
    const plain = preheat({});
    const r = JSON.parse(await waitLine(plain.p, /^\{.*\}$/m)) as PreheatJson;
    expect(await plain.p.exited).toBe(0);
    expect(r.bySource.seed ?? 0).toBe(0);
    expect(r.bySource.peer ?? 0).toBe(0);
    expect(r.bySource.registry).toBeGreaterThan(0);
    await cacheMatches(plain.cache);
    expect(seed.err()).toMatch(/refused a peer without a certificate from the cluster CA/);
  });

  it('a node with a certificate of another CA gets nothing from the cluster either', async () => {
    const foreign = preheat(tlsEnv(pki.foreign));
    const r = JSON.parse(await waitLine(foreign.p, /^\{.*\}$/m)) as PreheatJson;
    expect(await foreign.p.exited).toBe(0);
    expect(r.bySource.seed ?? 0).toBe(0);
    expect(r.bySource.peer ?? 0).toBe(0);
    expect(r.bySource.registry).toBeGreaterThan(0);
    await cacheMatches(foreign.cache);
  });
});
