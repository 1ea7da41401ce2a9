/**
 * Lazy container starts through peers, end to end. Hosts are network namespaces on a bridge with tc-shaped
 * links: a registry host (docker-registry holding the converted debian-python fixture), one seed
 * (`dfnode seed`) and three node hosts, each running its own `dfnode run` (snapshotter, in-process FUSE,
 * real kernel mounts) and its own containerd (own root, state and socket), both in the host's network
 * namespace (entered with nsenter --net, so that the FUSE mounts are in the mount namespace containerd and
 * runc stack their overlays in). All three `dfnode pull` + `ctr run` the same image at the same instant; the
 * containers list /usr/bin, hash every .py file of the standard library (a few MB) and import a set of
 * Python modules.
 *
 * Background fill is off on the nodes and full-copy fill off on the seed: what moves is what the containers
 * block on, so "what one host reads" is the bytes a node's reads took from remote sources (peer + seed +
 * registry in its dfnode_bytes_total), and registry egress is the bytes of blob responses in the registry's
 * access log (layer ranges, TOCs and the image config).
 *
 * Then a fourth host starts next to its warm neighbours and must take every block from them (the tracker's
 * bitmaps), none from the seed or the registry. Last, a failure the product promises: the dfnode run of every
 * holder is killed (SIGKILL by PID) while the seed's tracker still lists them; a fifth host starts the
 * container, skipping the dead holders (isolating them) and getting its blocks from the seed, not from the
 * registry.
 *
 * Needs root, /dev/fuse, overlayfs, containerd, ctr, runc, docker-registry, skopeo, umoci, iproute2/tc,
 * nsenter, curl and the debian-python fixture; skips locally with a printed reason, never in CI.
 */
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHROOT, WORKLOAD_ENV } from '../../bench/lib/cold-start.js';
import { cliPath, run, runCli } from '../helpers/cli.js';
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
import { umociUnpack } from '../helpers/node.js';
import { parseMetrics } from '../helpers/prom.js';

const netns = requireNetns(['docker-registry', 'curl', 'nsenter']);
const ctdReq = requireContainerd(['debootstrap']);
const req = netns.skip ? netns : ctdReq;

const NODES = 3;
const METRICS_PORT = 9311;
/** Reads a real set of files: a directory listing, every .py of the standard library, Python's imports. */
const SCRIPT =
  'set -e; ls /usr/bin | sha256sum; cat /usr/lib/python3*/*.py | sha256sum; ' +
  'python3 -c "import json, os, re, subprocess, email.parser, http.client, xml.dom.minidom, sqlite3; ' +
  "print(sorted(os.listdir('/usr/lib/python3/dist-packages'))[:5], len(os.listdir('/usr/lib')))\"";
const NODE_ENV = {
  DFNODE_FETCH_BACKGROUND_FILL: 'false',
  DFNODE_P2P_ANNOUNCE_INTERVAL_MS: '200',
  DFNODE_LOG_LEVEL: 'warn',
};
const SEED_ENV = { DFNODE_P2P_SEED_FILL: 'false', DFNODE_P2P_ANNOUNCE_INTERVAL_MS: '200' };
const REMOTE = ['peer', 'seed', 'registry'] as const;

interface Member {
  host: NetnsHost;
  node: DfnodeRun;
  ctd: TestContainerd;
}

interface StartResult {
  host: string;
  ms: number;
  output: string;
  /** dfnode_bytes_total by source after the container exited. */
  bytes: Record<string, number>;
  /** Every other counter of interest (name{label} → value). */
  counters: Record<string, number>;
}

describe.skipIf(req.skip)(
  'lazy container starts through peers (netns hosts, dfnode run + containerd)',
  () => {
    let work: string;
    let cluster: P2pCluster | undefined;
    let expected: string;
    const nodes: DfnodeRun[] = [];
    const ctds: TestContainerd[] = [];
    const members = new Map<string, Member>();
    /** The bytes one host read in the concurrent start (the largest of the three). */
    let oneHost = 0;

    beforeAll(async () => {
      cliPath('dfnode');
      const fixture = await ensureFixture('debian-python');
      await mkdir('/tmp/dfnode-lazy', { recursive: true });
      // short: containerd's and dfnode's sockets live below it
      work = await mkdtemp('/tmp/dfnode-lazy/t-');
      // what the script prints on the image itself: unpacked with umoci, run in a chroot (no dfnode involved)
      const rootfs = await umociUnpack(fixture.dir, fixture.tag, join(work, 'ref'));
      const ref = await run(CHROOT, [rootfs, '/bin/sh', '-c', SCRIPT], { env: WORKLOAD_ENV });
      if (ref.code !== 0) throw new Error(`reference run failed: ${ref.stderr}`);
      expected = ref.stdout;
      cluster = await P2pCluster.create({
        nodes: NODES,
        hostMbit: 100,
        registryMbit: 100,
        image: { layout: fixture },
        workDir: join(work, 'cluster'),
        extraHosts: ['late', 'late2'],
      });
      await cluster.startSeed(SEED_ENV);
      for (const host of [...cluster.nodes, cluster.topo.host('late'), cluster.topo.host('late2')]) {
        const dir = join(work, host.name);
        const launch = (cmd: string, args: string[]) => host.netArgv(cmd, args);
        const node = await startDfnodeRun({
          dir: join(dir, 'd'),
          launch,
          env: { ...cluster.memberEnv(host), ...NODE_ENV },
          node: { metricsAddress: `127.0.0.1:${METRICS_PORT}` },
        });
        nodes.push(node);
        const ctd = await startContainerd({ dir: join(dir, 'c'), snapshotterSocket: node.socket, launch });
        ctds.push(ctd);
        members.set(host.name, { host, node, ctd });
      }
    }, 900_000);

    afterAll(async () => {
      for (const c of ctds) await c.stop().catch(() => undefined);
      for (const n of nodes) await n.stop().catch(() => undefined);
      await cluster?.destroy();
      if (work) await removeWorkDir(work);
    }, 300_000);

    /** `dfnode pull` through the host's dfnode run, then `ctr run` of the script; its output and metrics. */
    async function start(m: Member): Promise<StartResult> {
      const c = cluster!;
      const t0 = Date.now();
      const pull = await runCli('dfnode', [
        'pull',
        '--plain-http',
        '--address',
        m.ctd.socket,
        '--control-socket',
        m.node.controlSocket,
        c.ref,
      ]);
      if (pull.code !== 0)
        throw new Error(`${m.host.name}: dfnode pull failed (${pull.code}): ${pull.stderr}`);
      const output = await m.ctd.ctrOk([
        'run',
        '--rm',
        '--snapshotter',
        'dfnode',
        ...Object.entries(WORKLOAD_ENV).flatMap(([k, v]) => ['--env', `${k}=${v}`]),
        c.ref,
        `lazy-${m.host.name}`,
        '/bin/sh',
        '-c',
        SCRIPT,
      ]);
      const ms = Date.now() - t0;
      const bytes: Record<string, number> = {};
      const counters: Record<string, number> = {};
      for (const s of parseMetrics(await c.scrape(m.host, METRICS_PORT))) {
        if (s.name === 'dfnode_bytes_total') bytes[s.labels.source!] = s.value;
        else if (/^dfnode_(peers_isolated|seeds_down|registry_fetches|tracker_answers)_total$/.test(s.name))
          counters[`${s.name}{${Object.values(s.labels).join(',')}}`] = s.value;
      }
      return { host: m.host.name, ms, output, bytes, counters };
    }

    const remote = (r: StartResult) => REMOTE.reduce((a, k) => a + (r.bytes[k] ?? 0), 0);
    const sum = (rs: StartResult[], k: string) => rs.reduce((a, r) => a + (r.bytes[k] ?? 0), 0);

    it(`${NODES} hosts pull and run the same image at once: right output, registry egress ≤ 1.1× one host, blocks via peers and seed`, async () => {
      const c = cluster!;
      c.registry.resetCounts();
      const results = await Promise.all(c.nodes.map((h) => start(members.get(h.name)!)));
      // the access log is read as it is written: give the last lines a moment
      await new Promise((r) => setTimeout(r, 500));
      const egress = c.registry.blobBytes();
      const byClient = c.registry.blobBytesByClient();
      oneHost = Math.max(...results.map(remote));
      console.log(
        `p2p lazy start x${NODES}: times ${results.map((r) => `${r.host} ${r.ms} ms`).join(', ')}; ` +
          `remote bytes per host ${results.map(remote).join(', ')}; registry egress ${egress} B ` +
          `(${(egress / oneHost).toFixed(3)}x one host; seed ${byClient.get(c.seedHost.ip) ?? 0} B); ` +
          `by source: peer ${sum(results, 'peer')}, seed ${sum(results, 'seed')}, registry ${sum(results, 'registry')}; ` +
          `layers ${c.imageBytes} B; ${JSON.stringify(results.map((r) => r.counters))}`,
      );
      for (const r of results) expect(r.output, `${r.host} output`).toBe(expected);
      // every host read real data from remote sources (the image is not on any host beforehand)
      for (const r of results) expect(remote(r), `${r.host} remote bytes`).toBeGreaterThan(1 << 20);
      expect(oneHost).toBeLessThan(c.imageBytes);
      // each block the containers blocked on left the registry about once
      expect(egress).toBeLessThanOrEqual(1.1 * oneHost);
      // the nodes took their blocks through the P2P tier: from each other and the seed, and from the registry
      // next to nothing but runs a seed handed back while its registry link was full (hand-back.ts), which
      // the registry sent to the cluster once like the rest (egress above)
      const handedBack = (r: StartResult) =>
        r.counters['dfnode_registry_fetches_total{seed_handed_back}'] ?? 0;
      expect(sum(results, 'peer') + sum(results, 'seed') + sum(results, 'registry')).toBeGreaterThanOrEqual(
        0.9 * NODES * oneHost,
      );
      for (const r of results)
        if ((r.bytes.registry ?? 0) > 0.05 * oneHost)
          expect(handedBack(r), `${r.host}: registry fetches handed back`).toBeGreaterThan(0);
      expect(sum(results, 'registry')).toBeLessThanOrEqual(1.1 * oneHost);
    }, 600_000);

    it('a host that starts after its neighbours takes the blocks from them (tracker bitmaps), not from the seed', async () => {
      const c = cluster!;
      expect(oneHost, 'the concurrent start ran first').toBeGreaterThan(0);
      c.registry.resetCounts();
      const r = await start(members.get('late')!);
      await new Promise((res) => setTimeout(res, 500));
      const egress = c.registry.blobBytes();
      console.log(
        `p2p lazy start next to ${NODES} warm neighbours: ${r.ms} ms; remote ${remote(r)} B ` +
          `(peer ${r.bytes.peer ?? 0}, seed ${r.bytes.seed ?? 0}, registry ${r.bytes.registry ?? 0}); ` +
          `registry egress ${egress} B; ${JSON.stringify(r.counters)}`,
      );
      expect(r.output).toBe(expected);
      expect(remote(r)).toBeGreaterThan(1 << 20);
      expect(r.bytes.peer ?? 0).toBeGreaterThanOrEqual(0.9 * remote(r));
      expect(r.bytes.registry ?? 0).toBe(0);
      expect(egress).toBeLessThanOrEqual(0.05 * oneHost);
    }, 600_000);

    it('dfnode run of every holder killed (SIGKILL): a further host skips the dead holders and starts from the seed, not the registry', async () => {
      const c = cluster!;
      expect(oneHost, 'the concurrent start ran first').toBeGreaterThan(0);
      // crash the dfnode run of every host that holds blocks; the seed's tracker still lists them (their TTL
      // has not run out)
      const holders = [...c.nodes, c.topo.host('late')];
      for (const h of holders) {
        const m = members.get(h.name)!;
        await m.node.kill();
        expect(spawnSync('kill', ['-0', String(m.node.pid)]).status, `${h.name} dfnode gone`).not.toBe(0);
      }
      const answer = await c.lookup(c.topo.host('late2'), c.seedHost);
      const listed = answer.holders.filter((h) => holders.some((n) => h.address === c.p2pAddress(n)));
      expect(listed.length, `tracker still lists the dead nodes: ${JSON.stringify(answer)}`).toBeGreaterThan(
        0,
      );
      c.registry.resetCounts();
      const r = await start(members.get('late2')!);
      await new Promise((res) => setTimeout(res, 500));
      const egress = c.registry.blobBytes();
      console.log(
        `p2p lazy start after killing ${holders.length} holders: ${r.ms} ms; remote ${remote(r)} B ` +
          `(peer ${r.bytes.peer ?? 0}, seed ${r.bytes.seed ?? 0}, registry ${r.bytes.registry ?? 0}); ` +
          `registry egress ${egress} B; ${JSON.stringify(r.counters)}`,
      );
      expect(r.output).toBe(expected);
      expect(r.bytes.seed ?? 0).toBeGreaterThanOrEqual(0.9 * remote(r));
      expect(r.bytes.registry ?? 0).toBeLessThanOrEqual(0.05 * oneHost);
      // the seed held every block the containers blocked on: the registry served (next to) nothing new
      expect(egress).toBeLessThanOrEqual(0.05 * oneHost);
      // it did try the dead holders and excluded them
      const isolated = Object.entries(r.counters)
        .filter(([k]) => k.startsWith('dfnode_peers_isolated_total'))
        .reduce((a, [, v]) => a + v, 0);
      expect(isolated).toBeGreaterThan(0);
    }, 600_000);
  },
);
