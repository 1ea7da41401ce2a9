/**
 * The registry mirror moves blobs through the P2P tier, end to end on network-namespace hosts (100 Mbit/s
 * links): a registry host with the debian-python fixture pushed as it is (two gzip layers, not converted),
 * one seed (`dfnode seed`), and three node hosts, each with its own `dfnode run` (mirror on 127.0.0.1:65001
 * of its namespace; on the first node in the fuse manager, as by default, on the others in `dfnode run`
 * itself) and its own containerd. All three `ctr images pull` the
 * image at once through their local mirror (the hosts.toml `dfnode mirror-setup` writes) and run it.
 *
 * Registry egress is the bytes of blob GETs in the registry's access log; what the nodes took from peers and
 * the seed is `dfnode_mirror_piece_bytes_total{source}` on their metrics. Last, the registry is stopped and a
 * node (the fuse manager one) pulls again after `ctr images rm --sync` (its content store emptied): the manifest from the mirror's
 * memory, the blobs from the node's cache on the remembered access. Then a fourth node host, up from the start
 * but without a pull of its own, pulls the image for the first time while the registry is still down: the
 * manifest from the seed's kept copy (the seed fetched it for the others), the blobs from the seed and peers.
 *
 * Needs root, containerd, ctr, runc, docker-registry, skopeo, iproute2/tc, nsenter, curl and the
 * debian-python fixture; skips locally with a printed reason, never in CI.
 */
import { mkdir, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stopFuseManager } from '../../src/fusemanager/client.js';
import { cliPath, runCli } from '../helpers/cli.js';
import {
  removeWorkDir,
  requireContainerd,
  startContainerd,
  startDfnodeRun,
  type DfnodeRun,
  type TestContainerd,
} from '../helpers/containerd.js';
import { ensureFixture } from '../helpers/fixtures.js';
import { P2pCluster, requireNetns, type NetnsHost } from '../helpers/netns-topology.js';
import { parseMetrics } from '../helpers/prom.js';

const netns = requireNetns(['docker-registry', 'curl', 'nsenter', 'skopeo']);
const ctdReq = requireContainerd();
const req = netns.skip ? netns : ctdReq;

const NODES = 3;
/** Hosts in the cluster: NODES that pull at once, and one that pulls only while the registry is down. */
const HOSTS = NODES + 1;
const MIRROR = '127.0.0.1:65001';
const METRICS_PORT = 9313;
const NODE_ENV = {
  DFNODE_MIRROR_LISTEN: MIRROR,
  // every blob GET asks the registry first, so that the pull with the registry stopped takes the outage path
  DFNODE_MIRROR_ACCESS_TTL_MS: '0',
  DFNODE_P2P_ANNOUNCE_INTERVAL_MS: '200',
  DFNODE_LOG_LEVEL: 'warn',
};

interface Member {
  host: NetnsHost;
  node: DfnodeRun;
  ctd: TestContainerd;
}

describe.skipIf(req.skip)('registry mirror through the P2P tier (netns hosts, containerd)', () => {
  let work: string;
  let cluster: P2pCluster | undefined;
  let hostsDir: string;
  const members: Member[] = [];

  beforeAll(async () => {
    cliPath('dfnode');
    const fixture = await ensureFixture('debian-python');
    await mkdir('/tmp/dfnode-mirror', { recursive: true });
    // short: containerd's and dfnode's sockets live below it
    work = await mkdtemp('/tmp/dfnode-mirror/t-');
    cluster = await P2pCluster.create({
      nodes: HOSTS,
      hostMbit: 100,
      registryMbit: 100,
      image: { layout: fixture },
      plain: true,
      workDir: join(work, 'cluster'),
    });
    await cluster.startSeed({ DFNODE_P2P_ANNOUNCE_INTERVAL_MS: '200' });
    hostsDir = join(work, 'certs.d');
    const setup = await runCli('dfnode', ['mirror-setup', '--containerd-dir', hostsDir, '--mirror', MIRROR]);
    if (setup.code !== 0) throw new Error(`mirror-setup failed: ${setup.stderr}`);
    for (const host of cluster.nodes) {
      const dir = join(work, host.name);
      const launch = (cmd: string, args: string[]) => host.netArgv(cmd, args);
      const node = await startDfnodeRun({
        dir: join(dir, 'd'),
        launch,
        // the first node as deployed by default: the mirror runs in the fuse manager (which holds the cache)
        fuseManager: host === cluster.nodes[0],
        env: { ...cluster.memberEnv(host), ...NODE_ENV },
        node: { metricsAddress: `127.0.0.1:${METRICS_PORT}` },
      });
      const ctd = await startContainerd({ dir: join(dir, 'c'), launch }).catch(async (err: unknown) => {
        await node.stop();
        throw err;
      });
      members.push({ host, node, ctd });
    }
  }, 900_000);

  afterAll(async () => {
    for (const m of members) await m.ctd.stop().catch(() => undefined);
    for (const m of members) await m.node.stop().catch(() => undefined);
    // the fuse manager outlives dfnode run by design: stopped by its pid file
    for (const m of members) await stopFuseManager(m.node.stateDir).catch(() => undefined);
    await cluster?.destroy();
    if (work) await removeWorkDir(work);
  }, 300_000);

  /** `ctr images pull` in the host's namespace (ctr fetches itself: it must reach the host's mirror). */
  async function pull(m: Member): Promise<number> {
    const t0 = Date.now();
    // throws with the tail of stderr when ctr fails
    await m.host.exec(
      'ctr',
      ['--address', m.ctd.socket, 'images', 'pull', '--hosts-dir', hostsDir, cluster!.ref],
      {
        signal: AbortSignal.timeout(600_000),
      },
    );
    return Date.now() - t0;
  }

  async function runImage(m: Member, name: string): Promise<string> {
    return m.ctd.ctrOk(['run', '--rm', cluster!.ref, name, 'python3', '-c', 'import json; print(6 * 7)']);
  }

  /** The mirror's counters of a node (name{label} → value). */
  async function counters(m: Member): Promise<Record<string, number>> {
    const out: Record<string, number> = {};
    for (const s of parseMetrics(await cluster!.scrape(m.host, METRICS_PORT)))
      if (s.name.startsWith('dfnode_mirror_'))
        out[`${s.name}{${Object.values(s.labels).join(',')}}`] = s.value;
    return out;
  }

  const get = (c: Record<string, number>, k: string) => c[k] ?? 0;

  it(`${NODES} hosts pull an unconverted image through their mirrors at once: it runs, the registry serves it about once, the bytes come from the seed and peers`, async () => {
    const c = cluster!;
    const image = c.imageBytes + c.configBytes;
    c.registry.resetCounts();
    const pulling = members.slice(0, NODES);
    const ms = await Promise.all(pulling.map(pull));
    for (const m of pulling) expect((await runImage(m, `mp-${m.host.name}`)).trim()).toBe('42');
    // the access log is read as it is written: give the last lines a moment
    await new Promise((r) => setTimeout(r, 500));
    const egress = c.registry.blobBytes();
    const byClient = c.registry.blobBytesByClient();
    const all = await Promise.all(pulling.map(counters));
    const sum = (k: string) => all.reduce((a, x) => a + get(x, k), 0);
    const peer = sum('dfnode_mirror_piece_bytes_total{peer}');
    const seed = sum('dfnode_mirror_piece_bytes_total{seed}');
    const fromRegistry = sum('dfnode_mirror_piece_bytes_total{registry}');
    console.log(
      `mirror x${NODES}: pulls ${ms.join(', ')} ms; image blobs ${image} B; registry egress ${egress} B ` +
        `(${(egress / image).toFixed(3)}x; seed ${byClient.get(c.seedHost.ip) ?? 0} B); pieces: peer ${peer}, ` +
        `seed ${seed}, registry ${fromRegistry}; ${JSON.stringify(all)}`,
    );
    expect(egress).toBeLessThanOrEqual(1.1 * image);
    // every node answered its blobs from the cluster, none streamed from the registry
    expect(sum('dfnode_mirror_blobs_total{registry}')).toBe(0);
    expect(sum('dfnode_mirror_events_total{cluster_fallback}')).toBe(0);
    expect(peer + seed).toBeGreaterThanOrEqual(0.9 * NODES * image);
    expect(fromRegistry).toBeLessThanOrEqual(0.1 * image);
    for (const h of c.nodes)
      expect(byClient.get(h.ip) ?? 0, `registry bytes to ${h.name}`).toBeLessThanOrEqual(0.05 * image);
    // the nodes asked the seed for the manifests, and it asked the registry
    expect(sum('dfnode_mirror_events_total{seed_manifest}')).toBeGreaterThan(0);
  }, 900_000);

  it('with the registry stopped, a node pulls the image again from its cache through the mirror', async () => {
    const c = cluster!;
    const m = members[0]!;
    const before = await counters(m);
    expect(
      get(before, 'dfnode_mirror_blobs_total{cluster}'),
      'the concurrent pull ran first',
    ).toBeGreaterThan(0);
    // the image and its blobs leave containerd's content store (the unpacked snapshots may stay)
    await m.ctd.ctrOk(['images', 'rm', '--sync', c.ref]);
    const held = (await m.ctd.ctrOk(['content', 'ls', '-q'])).split('\n').filter(Boolean);
    if (held.length) await m.ctd.ctrOk(['content', 'rm', ...held]);
    const content = await m.ctd.ctrOk(['content', 'ls', '-q']);
    for (const l of c.layers) expect(content).not.toContain(l.digest);
    await c.registry.stop();
    await pull(m);
    expect((await runImage(m, 'mp-again')).trim()).toBe('42');
    const after = await counters(m);
    console.log(`mirror pull with the registry stopped: ${JSON.stringify(after)}`);
    expect(get(after, 'dfnode_mirror_events_total{outage_answer}')).toBeGreaterThan(0);
    expect(
      get(after, 'dfnode_mirror_blobs_total{cache}') - get(before, 'dfnode_mirror_blobs_total{cache}'),
    ).toBeGreaterThanOrEqual(c.layers.length);
    expect(get(after, 'dfnode_mirror_events_total{stale_manifest}')).toBeGreaterThan(0);
  }, 600_000);

  it('with the registry still stopped, a host that never pulled the image pulls it through the cluster', async () => {
    const c = cluster!;
    const m = members[NODES]!;
    expect(get(await counters(m), 'dfnode_mirror_requests_total{manifest}'), 'no pull of its own yet').toBe(
      0,
    );
    await pull(m);
    expect((await runImage(m, 'mp-fresh')).trim()).toBe('42');
    const after = await counters(m);
    console.log(`first pull of a host with the registry stopped: ${JSON.stringify(after)}`);
    // the manifests: the seed's copies (kept from its fetch for the other nodes), answered stale
    expect(get(after, 'dfnode_mirror_events_total{stale_manifest}')).toBeGreaterThan(0);
    // every blob through the cluster, none from the registry (it is down)
    expect(get(after, 'dfnode_mirror_blobs_total{cluster}')).toBeGreaterThanOrEqual(c.layers.length);
    expect(get(after, 'dfnode_mirror_blobs_total{registry}')).toBe(0);
    const image = c.imageBytes + c.configBytes;
    const moved =
      get(after, 'dfnode_mirror_piece_bytes_total{peer}') +
      get(after, 'dfnode_mirror_piece_bytes_total{seed}');
    expect(moved).toBeGreaterThanOrEqual(0.99 * image);
    expect(get(after, 'dfnode_mirror_piece_bytes_total{registry}')).toBe(0);
  }, 600_000);
});
