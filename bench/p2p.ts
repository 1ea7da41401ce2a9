// bench/p2p: one converted layer (synthetic, ~64 MiB) to N hosts, each a network namespace with a shaped link,
// by `dfnode preheat` through a seed and peers versus every host downloading the blob from the registry
// directly (curl), in the same run. Prints a table, ratios and one JSON line (last line of stdout).
//
//   node dist/bench/p2p.js [--hosts 1,4,8,16] [--mib 64] [--host-mbit 20] [--registry-mbit 40]
//                          [--seed-timeout-ms MS] [--peer-timeout-ms MS] [--work-dir DIR] [--keep]
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { formatTable } from './lib/measure.js';
import { P2pCluster, repoRoot } from './lib/p2p-cluster.js';

const { values: flags } = parseArgs({
  options: {
    hosts: { type: 'string', default: '1,4,8,16' },
    mib: { type: 'string', default: '64' },
    'host-mbit': { type: 'string', default: '20' },
    'registry-mbit': { type: 'string', default: '40' },
    'seed-timeout-ms': { type: 'string' },
    'peer-timeout-ms': { type: 'string' },
    'work-dir': { type: 'string' },
    keep: { type: 'boolean', default: false },
    trace: { type: 'boolean', default: false },
    'skip-direct': { type: 'boolean', default: false },
    'queue-ms': { type: 'string' },
    'cpu-prof': { type: 'string' },
    'node-flags': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  process.stdout.write(
    'node dist/bench/p2p.js [--hosts 1,4,8,16] [--mib 64] [--host-mbit 20] [--registry-mbit 40]\n' +
      '  [--seed-timeout-ms MS] [--peer-timeout-ms MS] [--work-dir DIR] [--keep] [--trace]\n' +
      '  [--skip-direct] [--queue-ms MS] [--cpu-prof DIR] [--node-flags "FLAGS"]\n' +
      '  --trace: print the seed link rates (MB/s, per second) of each dfnode phase to stderr\n' +
      '  --cpu-prof DIR: write a V8 CPU profile of every dfnode process (seed and nodes) into DIR\n' +
      '  --node-flags "FLAGS": more Node.js flags for every dfnode process (e.g. --perf-basic-prof)\n',
  );
  process.exit(0);
}
const log = (s: string) => process.stderr.write(s + '\n');
const counts = flags.hosts.split(',').map(Number);
const maxN = Math.max(...counts);
const hostMbit = Number(flags['host-mbit']);
const registryMbit = Number(flags['registry-mbit']);
const env: NodeJS.ProcessEnv = {};
if (flags['seed-timeout-ms']) env.DFNODE_P2P_SEED_TIMEOUT_MS = flags['seed-timeout-ms'];
if (flags['peer-timeout-ms']) env.DFNODE_P2P_PEER_TIMEOUT_MS = flags['peer-timeout-ms'];

if (process.getuid?.() !== 0) {
  log('bench/p2p needs root (network namespaces, tc)');
  process.exit(2);
}

const base = flags['work-dir'] ?? join(repoRoot(), '.tmp', 'bench');
await mkdir(base, { recursive: true });
const work = await mkdtemp(join(base, 'p2p-'));
// file data 75% incompressible: the DFB blob comes out at ~0.84 of the file data, ~mib MiB
const mib = Number(flags.mib);
const cluster = await P2pCluster.create({
  nodes: maxN,
  hostMbit,
  registryMbit,
  queueMs: flags['queue-ms'] ? Number(flags['queue-ms']) : undefined,
  nodeFlags: [
    ...(flags['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${flags['cpu-prof']}`] : []),
    ...(flags['node-flags']?.split(/\s+/).filter(Boolean) ?? []),
  ],
  image: { bytes: Math.round((mib * 1024 * 1024) / 0.84), files: 6, incompressible: 0.75 },
  workDir: work,
  log,
});
const stopAll = () => void cluster.destroy().finally(() => process.exit(130));
process.once('SIGINT', stopAll);
process.once('SIGTERM', stopAll);

/** Samples the seed's and registry's link counters every second; logs the rates when stopped. */
function traceLinks(n: number): () => void {
  const seed = cluster.topo.host('seed');
  const reg = cluster.topo.host('registry');
  const nodes = cluster.nodes.slice(0, n);
  type Sample = { seedRx: number; seedTx: number; regTx: number; nodesRx: number; nodesTx: number };
  const samples: Sample[] = [];
  let stopped = false;
  const read = async () => {
    const ns = await Promise.all(nodes.map((h) => h.counters()));
    return {
      s: await seed.counters(),
      r: await reg.counters(),
      rx: ns.reduce((a, x) => a + x.rx, 0),
      tx: ns.reduce((a, x) => a + x.tx, 0),
    };
  };
  void (async () => {
    let prev = await read();
    let t = Date.now();
    while (!stopped) {
      await new Promise((r) => setTimeout(r, 1000));
      const now = await read();
      // reading every host's counters takes a while: rates over the real interval
      const s = (Date.now() - t) / 1000;
      t = Date.now();
      samples.push({
        seedRx: (now.s.rx - prev.s.rx) / s,
        seedTx: (now.s.tx - prev.s.tx) / s,
        regTx: (now.r.tx - prev.r.tx) / s,
        nodesRx: (now.rx - prev.rx) / n / s,
        nodesTx: (now.tx - prev.tx) / n / s,
      });
      prev = now;
    }
  })();
  return () => {
    stopped = true;
    const f = (k: keyof Sample) => samples.map((x) => (x[k] / 1e6).toFixed(1)).join(' ');
    log(
      `N=${n} trace (MB/s each second)\n  registry tx:  ${f('regTx')}\n  seed rx:      ${f('seedRx')}\n` +
        `  seed tx:      ${f('seedTx')}\n  node rx mean: ${f('nodesRx')}\n  node tx mean: ${f('nodesTx')}`,
    );
  };
}

/** CPU times of the whole machine (/proc/stat): busySince() tells whether a phase was CPU-bound. */
function cpuTimes(): { total: number; idle: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return { total: f.reduce((a, x) => a + x, 0), idle: f[3]! + (f[4] ?? 0) };
}
function busySince(from: { total: number; idle: number }): number {
  const now = cpuTimes();
  return 1 - (now.idle - from.idle) / Math.max(1, now.total - from.total);
}

/** CPU seconds a process has used so far, user and system; NaN once it is gone. */
function procTimes(pid: number): { user: number; system: number } {
  try {
    // fields after the command's closing parenthesis: utime and stime are the 12th and 13th
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return { user: Number(f[11]) / 100, system: Number(f[12]) / 100 };
  } catch {
    return { user: NaN, system: NaN };
  }
}

interface Row {
  n: number;
  mode: 'dfnode' | 'direct';
  meanS: number;
  maxS: number;
  egress: number;
  egressWire: number;
  fromPeers?: number;
  fromSeed?: number;
  fromRegistry?: number;
  verified?: boolean;
  /** Busy share of the machine's CPUs during the phase. */
  cpu?: number;
  /** CPU seconds a node process used until every node was done (mean), and the seed process. */
  nodeCpuS?: number;
  seedCpuS?: number;
}
const rows: Row[] = [];
const size = cluster.imageBytes;
const settle = () => new Promise((r) => setTimeout(r, 1000));

try {
  log(
    `layer: ${size} B (${(size / 2 ** 20).toFixed(1)} MiB) DFB blob; hosts ${hostMbit} Mbit/s, registry ${registryMbit} Mbit/s`,
  );
  const reg = cluster.topo.host('registry');
  for (const n of counts) {
    const hosts = cluster.nodes.slice(0, n);
    // dfnode: a fresh seed and fresh node caches each time
    await settle();
    let b0 = cluster.registry.blobBytes();
    let w0 = (await reg.counters()).tx;
    try {
      const seed = await cluster.startSeed(env);
      const s0 = procTimes(seed.pid);
      const seedCpu0 = s0.user + s0.system;
      log(`N=${n}: dfnode preheat`);
      const stopTrace = flags.trace ? traceLinks(n) : undefined;
      const cpu0 = cpuTimes();
      const runs = cluster.startPreheat(hosts, { env });
      const r = await Promise.all(runs.map((x) => x.result())).finally(() => stopTrace?.());
      const cpu = busySince(cpu0);
      const t = runs.map((x) => procTimes(x.proc.pid));
      const st = procTimes(seed.pid);
      const mean = (k: 'user' | 'system') => t.reduce((a, x) => a + x[k], 0) / n;
      const nodeCpuS = mean('user') + mean('system');
      const seedCpuS = st.user + st.system - seedCpu0;
      log(
        `  cpu s: node mean user ${mean('user').toFixed(2)} system ${mean('system').toFixed(2)}; seed ` +
          `(since start) user ${st.user.toFixed(2)} system ${st.system.toFixed(2)}`,
      );
      if (flags.trace)
        for (const x of r)
          log(`  ${x.host}: ${(x.ms / 1000).toFixed(1)} s, planner ${JSON.stringify(x.fill)}`);
      await settle();
      let verified = true;
      for (const x of r) verified &&= await cluster.cacheVerifies(x.cacheDir);
      const sum = (k: string) => r.reduce((a, x) => a + (x.bySource[k] ?? 0), 0);
      const total = n * size;
      rows.push({
        n,
        mode: 'dfnode',
        meanS: r.reduce((a, x) => a + x.ms, 0) / n / 1000,
        maxS: Math.max(...r.map((x) => x.ms)) / 1000,
        egress: (cluster.registry.blobBytes() - b0) / size,
        egressWire: ((await reg.counters()).tx - w0) / size,
        fromPeers: sum('peer') / total,
        fromSeed: sum('seed') / total,
        fromRegistry: sum('registry') / total,
        verified,
        cpu,
        nodeCpuS,
        seedCpuS,
      });
    } catch (err) {
      // a node that fails (e.g. preheat stalls) is a result too: record it, go on with the next N
      log(`N=${n}: dfnode FAILED: ${(err as Error).message.split('\n')[0]}`);
      rows.push({ n, mode: 'dfnode', meanS: NaN, maxS: NaN, egress: NaN, egressWire: NaN, verified: false });
    }
    log(`N=${n}: ${JSON.stringify(rows[rows.length - 1])}`);
    await cluster.stopAll();
    if (flags['skip-direct']) continue;
    // direct: every host curls the blob from the registry at once
    await settle();
    b0 = cluster.registry.blobBytes();
    w0 = (await reg.counters()).tx;
    log(`N=${n}: direct download`);
    const dcpu0 = cpuTimes();
    const d = await cluster.directDownload(hosts);
    const dcpu = busySince(dcpu0);
    await settle();
    rows.push({
      n,
      mode: 'direct',
      meanS: d.reduce((a, x) => a + x.ms, 0) / n / 1000,
      maxS: Math.max(...d.map((x) => x.ms)) / 1000,
      egress: (cluster.registry.blobBytes() - b0) / size,
      egressWire: ((await reg.counters()).tx - w0) / size,
      verified: d.every((x) => x.bytes === size),
      cpu: dcpu,
    });
    log(`N=${n}: ${JSON.stringify(rows[rows.length - 1])}`);
  }
} finally {
  if (!flags.keep) await cluster.destroy();
  else await cluster.stopAll();
  if (!flags.keep) await rm(work, { recursive: true, force: true });
}

const pct = (x?: number) => (x === undefined ? '' : `${(x * 100).toFixed(0)}%`);
process.stdout.write(
  `bench/p2p: ${(size / 2 ** 20).toFixed(1)} MiB DFB layer; hosts ${hostMbit} Mbit/s, registry host ${registryMbit} Mbit/s` +
    (Object.keys(env).length ? `; ${JSON.stringify(env)}` : '') +
    '\n\n' +
    formatTable(
      [
        'N',
        'mode',
        'mean s',
        'max s',
        'registry egress ×',
        'wire ×',
        'peers',
        'seed',
        'registry',
        'ok',
        'cpu',
        'node cpu s',
        'seed cpu s',
      ],
      rows.map((x) => [
        String(x.n),
        x.mode,
        x.meanS.toFixed(1),
        x.maxS.toFixed(1),
        x.egress.toFixed(2),
        x.egressWire.toFixed(2),
        pct(x.fromPeers),
        pct(x.fromSeed),
        pct(x.fromRegistry),
        x.verified ? 'yes' : 'NO',
        pct(x.cpu),
        x.nodeCpuS === undefined ? '' : x.nodeCpuS.toFixed(1),
        x.seedCpuS === undefined ? '' : x.seedCpuS.toFixed(1),
      ]),
    ) +
    '\n\n',
);
const one = rows.find((x) => x.mode === 'dfnode' && x.n === Math.min(...counts));
const ratios: Record<string, { meanVsOneHost: number; meanVsDirect: number; egress: number }> = {};
for (const n of counts) {
  const p = rows.find((x) => x.mode === 'dfnode' && x.n === n)!;
  const d = rows.find((x) => x.mode === 'direct' && x.n === n) ?? { meanS: NaN, egress: NaN };
  ratios[n] = { meanVsOneHost: p.meanS / one!.meanS, meanVsDirect: p.meanS / d.meanS, egress: p.egress };
  process.stdout.write(
    `N=${n}: dfnode mean ${(p.meanS / one!.meanS).toFixed(2)}× the ${one!.n}-host mean (target ≤ 1.5), ` +
      `${(p.meanS / d.meanS).toFixed(2)}× direct; registry egress ${p.egress.toFixed(2)}× (target ≤ 1.1) vs ${d.egress.toFixed(2)}× direct\n`,
  );
}
process.stdout.write(
  JSON.stringify({ bench: 'p2p', layerBytes: size, hostMbit, registryMbit, env, rows, ratios }) + '\n',
);
