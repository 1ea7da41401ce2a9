// bench/mirror: an unconverted image (debian-python: two gzip layers) to N hosts, each a network namespace
// with a shaped link and its own containerd, pulled through each host's registry mirror (`dfnode run` with the
// mirror on, a seed, peers) versus containerd pulling from the registry directly, in the same run. A pull is
// `ctr content fetch` then `ctr images pull` (the unpack), timed apart: the bytes, then the whole pull. Prints
// a table and one JSON line (last line of stdout).
//
//   node dist/bench/mirror.js [--hosts 1,4,8,16] [--host-mbit 20] [--registry-mbit 40]
//                             [--fixture debian-python] [--work-dir DIR] [--keep] [--log-level warn]
//                             [--modes direct,mirror] [--cpu-prof DIR] [--node-flags "FLAGS"] [--trace]
//
// With --trace, the seed's, the registry's and the nodes' link rates each second of the mirror pulls, and how
// busy the CPUs were. With --keep, the work directory stays, with each node's log
// (`n<N>/m/<host>/dfnode.log`, at --log-level), its metrics after the pulls (`metrics.txt` beside it) and the
// seed's log (`n<N>/seed.log`).
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { PrivateContainerd } from './lib/containerd.js';
import { DfnodeRun } from './lib/dfnode-run.js';
import { locateFixture } from './lib/fixture.js';
import { nodeFlagsFrom } from './lib/main.js';
import { formatTable, run } from './lib/measure.js';
import { cli, LINK_QUEUE_HELP, linkQueue, P2pCluster, repoRoot } from './lib/p2p-cluster.js';
import type { NetnsHost } from './lib/netns-topology.js';
import { busySince, cpuTimes, traceLinks } from './lib/p2p-phase.js';

const { values: flags } = parseArgs({
  options: {
    hosts: { type: 'string', default: '1,4,8,16' },
    'host-mbit': { type: 'string', default: '20' },
    'registry-mbit': { type: 'string', default: '40' },
    fixture: { type: 'string', default: 'debian-python' },
    'work-dir': { type: 'string' },
    keep: { type: 'boolean', default: false },
    'log-level': { type: 'string', default: 'warn' },
    'link-queue': { type: 'string', default: 'small-first' },
    modes: { type: 'string', default: 'direct,mirror' },
    'cpu-prof': { type: 'string' },
    'node-flags': { type: 'string' },
    trace: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  process.stdout.write(
    'node dist/bench/mirror.js [--hosts 1,4,8,16] [--host-mbit 20] [--registry-mbit 40]\n' +
      '  [--fixture debian-python] [--work-dir DIR] [--keep] [--log-level warn]\n' +
      '  [--link-queue small-first|ack-priority|fifo]\n' +
      '  [--modes direct,mirror] [--cpu-prof DIR] [--node-flags "FLAGS"] [--trace]\n' +
      '  --modes: which pulls to time (mirror alone is quicker for trying mirror changes)\n' +
      '  --cpu-prof DIR: write a V8 CPU profile of every `dfnode run` and seed (mirror mode) into DIR\n' +
      '  --node-flags "FLAGS": more Node.js flags for every `dfnode run` and seed (e.g. --perf-basic-prof)\n' +
      LINK_QUEUE_HELP +
      "  --keep: leave the work directory, with every node's log and metrics and the seed's log\n" +
      "  --trace: print the seed's, the registry's and the nodes' link rates (MB/s, each second) during the\n" +
      "    mirror pulls, and how busy the machine's CPUs were\n",
  );
  process.exit(0);
}
const log = (s: string) => process.stderr.write(s + '\n');
if (process.getuid?.() !== 0) {
  log('bench/mirror needs root (network namespaces, tc, containerd)');
  process.exit(2);
}
const counts = flags.hosts.split(',').map(Number);
const smallFirst = linkQueue(flags['link-queue']);
if (smallFirst === undefined) {
  log(`--link-queue: small-first, ack-priority or fifo, not ${flags['link-queue']}`);
  process.exit(2);
}
const modes = new Set(flags.modes.split(','));
if (![...modes].every((m) => m === 'direct' || m === 'mirror')) {
  log(`--modes: direct and/or mirror, not ${flags.modes}`);
  process.exit(2);
}
const nodeFlags = nodeFlagsFrom(flags);
const MIRROR = '127.0.0.1:65001';
const METRICS_PORT = 9314;

const base = flags['work-dir'] ?? join(repoRoot(), '.tmp', 'bench');
await mkdir(base, { recursive: true });
const work = await mkdtemp(join(base, 'mirror-'));
const fixture = await locateFixture(repoRoot(), flags.fixture, log);
const cluster = await P2pCluster.create({
  nodes: Math.max(...counts),
  hostMbit: Number(flags['host-mbit']),
  registryMbit: Number(flags['registry-mbit']),
  image: { layout: { dir: fixture, tag: 'latest' } },
  plain: true,
  smallFirst,
  workDir: join(work, 'cluster'),
  // the seed runs as bin/dfnode starts it (DAEMON_NODE_FLAGS), with --node-flags and --cpu-prof too
  nodeFlags,
  log,
});
const running: { stop(): Promise<void> }[] = [];
const stopRunning = async () => {
  for (const r of running.splice(0).reverse()) await r.stop().catch(() => undefined);
  await cluster.stopAll();
};
const stopAll = () =>
  void stopRunning().finally(() => void cluster.destroy().finally(() => process.exit(130)));
process.once('SIGINT', stopAll);
process.once('SIGTERM', stopAll);

const hostsDir = join(work, 'certs.d');
await run(process.execPath, [
  cli('dfnode'),
  'mirror-setup',
  '--containerd-dir',
  hostsDir,
  '--mirror',
  MIRROR,
]);
const image = cluster.imageBytes + cluster.configBytes;
const launch = (h: NetnsHost) => (cmd: string, args: string[]) => h.netArgv(cmd, args);

/**
 * On each host at once (in its namespace: ctr fetches itself): `ctr content fetch` (the image's bytes into
 * containerd's content store), then `ctr images pull` (finds the content there, unpacks it): what one
 * `ctr images pull` does, in two steps so that the transfer is timed apart from the unpack. Seconds each.
 */
async function pullAll(
  hosts: NetnsHost[],
  ctds: PrivateContainerd[],
  extra: string[],
  /** Called once every host's fetch is done (before the last unpacks). */
  fetched?: () => void,
): Promise<{ fetch: number; pull: number }[]> {
  let left = hosts.length;
  return Promise.all(
    hosts.map(async (h, i) => {
      const ctr = ['-a', ctds[i]!.address, '-n', 'bench'];
      const t0 = Date.now();
      await h.exec('ctr', [...ctr, 'content', 'fetch', ...extra, cluster.ref]);
      const t1 = Date.now();
      if (--left === 0) fetched?.();
      await h.exec('ctr', [...ctr, 'images', 'pull', ...extra, cluster.ref]);
      return { fetch: (t1 - t0) / 1000, pull: (Date.now() - t0) / 1000 };
    }),
  );
}

interface Row {
  n: number;
  mode: 'mirror' | 'direct';
  meanS: number;
  maxS: number;
  /** Mean and max time until the bytes were in containerd's content store (the pull before its unpack). */
  fetchMeanS: number;
  fetchMaxS: number;
  egress: number;
  fromPeers?: number;
  fromSeed?: number;
  fromRegistry?: number;
}
const rows: Row[] = [];
const mean = (xs: number[]) => xs.reduce((a, x) => a + x, 0) / xs.length;
const times = (s: { fetch: number; pull: number }[]) => ({
  meanS: mean(s.map((x) => x.pull)),
  maxS: Math.max(...s.map((x) => x.pull)),
  fetchMeanS: mean(s.map((x) => x.fetch)),
  fetchMaxS: Math.max(...s.map((x) => x.fetch)),
});
const settle = () => new Promise((r) => setTimeout(r, 1000));

try {
  log(`image: ${image} B in ${cluster.layers.length} layers + config; ${flags['host-mbit']} Mbit/s hosts`);
  for (const n of counts) {
    const hosts = cluster.nodes.slice(0, n);
    const dir = join(work, `n${n}`);
    // direct: containerd pulls from the registry
    if (modes.has('direct')) {
      const ctds: PrivateContainerd[] = [];
      for (const h of hosts) {
        const c = await PrivateContainerd.start(join(dir, 'direct', h.name), { launch: launch(h) });
        running.push(c);
        ctds.push(c);
      }
      await settle();
      const b0 = cluster.registry.blobBytes();
      log(`N=${n}: direct pulls`);
      const s = await pullAll(hosts, ctds, ['--plain-http']);
      await settle();
      rows.push({
        n,
        mode: 'direct',
        ...times(s),
        egress: cluster.registry.blobBytes() - b0,
      });
      await stopRunning();
    }
    // mirror: a fresh seed, fresh node caches and containerds
    if (modes.has('mirror')) {
      const seed = await cluster.startSeed({ DFNODE_LOG_LEVEL: flags['log-level'] });
      const ctds: PrivateContainerd[] = [];
      for (const h of hosts) {
        const node = await DfnodeRun.start({
          cli: cli('dfnode'),
          dir: join(dir, 'm', h.name, 'd'),
          launch: launch(h),
          env: cluster.memberEnv(h),
          config: { mirror: { listen: MIRROR }, node: { metricsAddress: `127.0.0.1:${METRICS_PORT}` } },
          logLevel: flags['log-level'],
          logFile: join(dir, 'm', h.name, 'dfnode.log'),
          nodeFlags,
        });
        running.push(node);
        const c = await PrivateContainerd.start(join(dir, 'm', h.name, 'c'), { launch: launch(h) });
        running.push(c);
        ctds.push(c);
      }
      await settle();
      const b0 = cluster.registry.blobBytes();
      log(`N=${n}: pulls through the mirror`);
      let stopTrace = flags.trace ? traceLinks(cluster, n, log) : undefined;
      const cpu0 = cpuTimes();
      let fetchBusy = NaN;
      const s = await pullAll(hosts, ctds, ['--hosts-dir', hostsDir], () => {
        fetchBusy = busySince(cpu0);
        stopTrace?.();
        stopTrace = undefined;
      });
      if (flags.trace) {
        const pct = (x: number) => `${(100 * x).toFixed(0)} %`;
        log(
          `N=${n}: CPUs busy ${pct(fetchBusy)} until the last fetch, ${pct(busySince(cpu0))} over the pulls`,
        );
      }
      await settle();
      const by: Record<string, number> = {};
      await writeFile(join(dir, 'seed.log'), seed.stderr());
      for (const h of hosts) {
        const text = await cluster.scrape(h, METRICS_PORT);
        await writeFile(join(dir, 'm', h.name, 'metrics.txt'), text);
        for (const line of text.split('\n')) {
          const m = /^dfnode_mirror_piece_bytes_total\{source="(\w+)"\} (\S+)$/.exec(line);
          if (m) by[m[1]!] = (by[m[1]!] ?? 0) + Number(m[2]);
        }
      }
      rows.push({
        n,
        mode: 'mirror',
        ...times(s),
        egress: cluster.registry.blobBytes() - b0,
        fromPeers: by.peer ?? 0,
        fromSeed: by.seed ?? 0,
        fromRegistry: by.registry ?? 0,
      });
      await stopRunning();
    }
  }
} finally {
  await stopRunning();
  await cluster.destroy();
  if (!flags.keep) await rm(work, { recursive: true, force: true });
}

const mb = (b: number | undefined) => (b === undefined ? '' : (b / 1e6).toFixed(1));
const one = rows.find((r) => r.n === 1 && r.mode === 'mirror');
process.stdout.write(
  `bench/mirror: ${flags.fixture}; hosts ${flags['host-mbit']} Mbit/s, registry host ${flags['registry-mbit']} Mbit/s, ` +
    `links ${flags['link-queue']}\n\n` +
    formatTable(
      [
        'N',
        'mode',
        'mean s',
        'max s',
        'mean / 1 host',
        'fetch mean s',
        'fetch max s',
        'fetch / 1 host',
        'registry MB',
        'egress / image',
        'peer MB',
        'seed MB',
        'registry pieces MB',
      ],
      rows.map((r) => [
        String(r.n),
        r.mode,
        r.meanS.toFixed(1),
        r.maxS.toFixed(1),
        r.mode === 'mirror' && one ? (r.meanS / one.meanS).toFixed(2) : '',
        r.fetchMeanS.toFixed(1),
        r.fetchMaxS.toFixed(1),
        r.mode === 'mirror' && one ? (r.fetchMeanS / one.fetchMeanS).toFixed(2) : '',
        mb(r.egress),
        (r.egress / image).toFixed(3),
        mb(r.fromPeers),
        mb(r.fromSeed),
        mb(r.fromRegistry),
      ]),
    ) +
    '\n',
);
const direct1 = rows.find((r) => r.n === 1 && r.mode === 'direct');
if (one && direct1)
  process.stdout.write(
    `N=1 through the mirror / direct: pull ${(one.meanS / direct1.meanS).toFixed(2)}x, ` +
      `fetch ${(one.fetchMeanS / direct1.fetchMeanS).toFixed(2)}x\n`,
  );
process.stdout.write(
  JSON.stringify({
    bench: 'mirror',
    fixture: flags.fixture,
    imageBytes: image,
    hostMbit: Number(flags['host-mbit']),
    registryMbit: Number(flags['registry-mbit']),
    rows,
  }) + '\n',
);
