// bench/p2p: one converted layer (synthetic, ~64 MiB) to N hosts, each a network namespace with a shaped link,
// in the same run by `dfnode preheat` through a seed and peers (a process started on each host, and `dfnode
// run` daemons preheating over their control sockets), by every host downloading the blob from the
// registry directly (curl), and by BitTorrent (aria2c leechers, opentracker, one aria2c seeder in the registry
// host seeding the same blob). Prints a table, ratios and one JSON line (last line of stdout).
//
//   node dist/bench/p2p.js [--hosts 1,4,8,16] [--modes dfnode,dfnode-run,dfnode-warm,direct,bittorrent] [--mib 64]
//                          [--host-mbit 20] [--registry-mbit 40] [--bt-piece-kib 256|1024]
//                          [--seed-timeout-ms MS] [--peer-timeout-ms MS] [--work-dir DIR] [--keep]
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pieceLengthExponent } from './lib/aria2.js';
import { BtSwarm } from './lib/bt-swarm.js';
import { nodeFlagsFrom } from './lib/main.js';
import { processTimes, versionOf } from './lib/measure.js';
import { LINK_QUEUE_HELP, linkQueue, P2pCluster, repoRoot, type PreheatResult } from './lib/p2p-cluster.js';
import { preheatThroughDaemons } from './lib/p2p-daemons.js';
import { rowsTable, type P2pRow } from './lib/p2p-rows.js';
import {
  answersSince,
  busySince,
  cpuTimes,
  movedGiB as moved,
  nodeAnswers,
  traceLinks,
  trackerCalls,
} from './lib/p2p-phase.js';

const { values: flags } = parseArgs({
  options: {
    hosts: { type: 'string', default: '1,4,8,16' },
    modes: { type: 'string', default: 'dfnode,dfnode-run,direct,bittorrent' },
    'bt-piece-kib': { type: 'string', default: '256' },
    'bt-exit-when-done': { type: 'boolean', default: false },
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
    'link-queue': { type: 'string', default: 'small-first' },
    'cpu-prof': { type: 'string' },
    'node-flags': { type: 'string' },
    'warm-mib': { type: 'string', default: '16' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  process.stdout.write(
    'node dist/bench/p2p.js [--hosts 1,4,8,16] [--modes dfnode,dfnode-run,direct,bittorrent] [--mib 64]\n' +
      '  [--host-mbit 20] [--registry-mbit 40] [--bt-piece-kib 256|1024] [--bt-exit-when-done]\n' +
      '  [--seed-timeout-ms MS] [--peer-timeout-ms MS] [--work-dir DIR] [--keep] [--trace]\n' +
      '  [--skip-direct] [--queue-ms MS] [--link-queue small-first|ack-priority|fifo] [--cpu-prof DIR] [--node-flags "FLAGS"]\n' +
      '  [--warm-mib 16]\n' +
      LINK_QUEUE_HELP +
      '  --modes: which of dfnode, dfnode-run, direct (curl), bittorrent (aria2c + opentracker) run for each N;\n' +
      '    dfnode: a `dfnode preheat --serve` process started on each host at t = 0; dfnode-run: a `dfnode run`\n' +
      '    daemon on each host, started before the clock, asked to preheat over its control socket at t = 0;\n' +
      '    dfnode-warm: as dfnode-run, but the daemons (and the seed) have first preheated another image\n' +
      '    of --warm-mib MiB together, untimed: daemons that have been up a while, their code compiled\n' +
      '  --bt-piece-kib: piece size of the torrent (256 or 1024 KiB)\n' +
      '  --bt-exit-when-done: aria2c leechers exit when complete (default: they seed until all are done)\n' +
      '  --skip-direct: the same as leaving direct out of --modes\n' +
      '  --trace: print the seed link rates (MB/s, per second) of each dfnode phase, and the time of\n' +
      '    each aria2c leecher, to stderr\n' +
      '  --keep: leave the work directory, and the namespaces with the registry up: the bench stays running\n' +
      '    after its table until it is interrupted (SIGINT/SIGTERM then removes the namespaces)\n' +
      '  --cpu-prof DIR: write a V8 CPU profile of every dfnode process (seed and nodes) into DIR\n' +
      '  --node-flags "FLAGS": more Node.js flags for every dfnode process (e.g. --perf-basic-prof)\n' +
      "  s/GiB moved: CPU seconds per GiB the host's link carried in and out (a swarm node sends about what\n" +
      '    it receives; the seed receives from the registry and sends to the nodes)\n',
  );
  process.exit(0);
}
const log = (s: string) => process.stderr.write(s + '\n');
const counts = flags.hosts.split(',').map(Number);
const maxN = Math.max(...counts);
const hostMbit = Number(flags['host-mbit']);
const registryMbit = Number(flags['registry-mbit']);
const MODES = ['dfnode', 'dfnode-run', 'dfnode-warm', 'direct', 'bittorrent'] as const;
type Mode = (typeof MODES)[number];
const modes = new Set(flags.modes.split(',').filter(Boolean) as Mode[]);
for (const m of modes)
  if (!MODES.includes(m)) {
    log(`--modes: unknown mode ${m} (${MODES.join(', ')})`);
    process.exit(2);
  }
if (flags['skip-direct']) modes.delete('direct');
const smallFirst = linkQueue(flags['link-queue']);
if (smallFirst === undefined) {
  log(`--link-queue: small-first, ack-priority or fifo, not ${flags['link-queue']}`);
  process.exit(2);
}
const btPieceBytes = Number(flags['bt-piece-kib']) * 1024;
try {
  pieceLengthExponent(btPieceBytes);
} catch (err) {
  log(`--bt-piece-kib: ${(err as Error).message}`);
  process.exit(2);
}
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
  smallFirst,
  nodeFlags: nodeFlagsFrom(flags),
  image: { bytes: Math.round((mib * 1024 * 1024) / 0.84), files: 6, incompressible: 0.75 },
  warmImage: modes.has('dfnode-warm')
    ? { bytes: Math.round((Number(flags['warm-mib']) * 1024 * 1024) / 0.84), files: 2, seed: 'warm-up' }
    : undefined,
  // BitTorrent's tracker gets a host of its own: its traffic stays off the registry's link
  extraHosts: modes.has('bittorrent') ? ['tracker'] : [],
  workDir: work,
  log,
});
let bt: BtSwarm | undefined;
const stopAll = () =>
  void (bt?.stopAll() ?? Promise.resolve()).finally(
    () => void cluster.destroy().finally(() => process.exit(130)),
  );
process.once('SIGINT', stopAll);
process.once('SIGTERM', stopAll);

type Row = P2pRow<Mode>;
const rows: Row[] = [];
const size = cluster.imageBytes;
const gib = size / 2 ** 30;
const settle = () => new Promise((r) => setTimeout(r, 1000));
const reg = cluster.topo.host('registry');
const failed = (n: number, mode: Mode, err: unknown): Row => {
  // a phase that fails (e.g. a node stalls) is a result too: record it, go on with the next
  log(`N=${n}: ${mode} FAILED: ${(err as Error).message.split('\n')[0]}`);
  return { n, mode, meanS: NaN, maxS: NaN, egress: NaN, egressWire: NaN, verified: false };
};
const times = (ms: number[]) => ({
  meanS: ms.reduce((a, x) => a + x, 0) / ms.length / 1000,
  maxS: Math.max(...ms) / 1000,
});

const SEED_METRICS_PORT = 9877;
/** Where each `dfnode run` of the dfnode-warm mode serves its metrics (nodeAnswers). */
const NODE_METRICS_PORT = 9878;

/** dfnode: a fresh seed and fresh node caches; every node preheats at once and keeps serving peers. */
async function dfnodePhase(n: number): Promise<Row> {
  const hosts = cluster.nodes.slice(0, n);
  const b0 = cluster.registry.blobBytes();
  const w0 = (await reg.counters()).tx;
  // its metrics on the loopback of its namespace (trackerCalls)
  const seed = await cluster.startSeed(env, {
    args: ['--metrics-address', `127.0.0.1:${SEED_METRICS_PORT}`],
  });
  const s0 = processTimes(seed.pid);
  const seedCpu0 = s0.user + s0.system;
  log(`N=${n}: dfnode preheat`);
  const stopTrace = flags.trace ? traceLinks(cluster, n, log) : undefined;
  const cpu0 = cpuTimes();
  const runs = cluster.startPreheat(hosts, { env });
  const r = await Promise.all(runs.map((x) => x.result())).finally(() => stopTrace?.());
  const cpu = busySince(cpu0);
  const t = runs.map((x) => processTimes(x.proc.pid));
  const st = processTimes(seed.pid);
  const mean = (k: 'user' | 'system') => t.reduce((a, x) => a + x[k], 0) / n;
  log(
    `  cpu s: node mean user ${mean('user').toFixed(2)} system ${mean('system').toFixed(2)}; seed ` +
      `(since start) user ${st.user.toFixed(2)} system ${st.system.toFixed(2)}`,
  );
  const calls = await trackerCalls(cluster, SEED_METRICS_PORT);
  const perNodeS = Math.max(...r.map((x) => x.ms)) / 1000;
  if (calls)
    log(
      `  tracker calls: ${calls.announce} announces, ${calls.lookup} lookups ` +
        `(${((calls.announce + calls.lookup) / n / perNodeS).toFixed(1)}/s per node over the slowest node's time)`,
    );
  return dfnodeRow('dfnode', n, r, {
    b0,
    w0,
    cpu,
    nodeCpuS: mean('user') + mean('system'),
    seedCpuS: st.user + st.system - seedCpu0,
  });
}

/** A dfnode phase's row from its nodes' results (each node's cache is hashed against the blob digest). */
async function dfnodeRow(
  mode: 'dfnode' | 'dfnode-run' | 'dfnode-warm',
  n: number,
  r: PreheatResult[],
  o: {
    b0: number;
    w0: number;
    cpu: number;
    nodeCpuS: number;
    seedCpuS: number;
    nodeMovedGiB?: number;
    seedMovedGiB?: number;
  },
): Promise<Row> {
  if (flags.trace)
    for (const x of r) log(`  ${x.host}: ${(x.ms / 1000).toFixed(1)} s, planner ${JSON.stringify(x.fill)}`);
  await settle();
  let verified = true;
  for (const x of r) verified &&= await cluster.cacheVerifies(x.cacheDir);
  const sum = (k: string) => r.reduce((a, x) => a + (x.bySource[k] ?? 0), 0);
  const total = n * size;
  return {
    n,
    mode,
    ...times(r.map((x) => x.ms)),
    egress: (cluster.registry.blobBytes() - o.b0) / size,
    egressWire: ((await reg.counters()).tx - o.w0) / size,
    fromPeers: sum('peer') / total,
    fromSeed: sum('seed') / total,
    fromRegistry: sum('registry') / total,
    verified,
    cpu: o.cpu,
    nodeCpuS: o.nodeCpuS,
    seedCpuS: o.seedCpuS,
    nodeMovedGiB: o.nodeMovedGiB,
    seedMovedGiB: o.seedMovedGiB,
  };
}

let daemonPhases = 0;
/**
 * dfnode-run: a fresh seed and a `dfnode run` daemon with a fresh cache on every node host, started before the
 * clock (a DaemonSet's pods are up before a rollout); every daemon preheats at once through its control socket.
 * dfnode-warm: the same, after the daemons have preheated another image together (untimed).
 */
async function dfnodeRunPhase(n: number, mode: 'dfnode-run' | 'dfnode-warm'): Promise<Row> {
  const hosts = cluster.nodes.slice(0, n);
  const seed = await cluster.startSeed(env, {
    args: ['--metrics-address', `127.0.0.1:${SEED_METRICS_PORT}`],
  });
  const warmRef = mode === 'dfnode-warm' ? cluster.warmRef : undefined;
  log(
    `N=${n}: dfnode run daemons, ${warmRef ? 'a warm-up preheat of another image, ' : ''}` +
      `then preheat through each one's control socket`,
  );
  let stopTrace: (() => void) | undefined;
  let at0 = {
    b0: 0,
    w0: 0,
    cpu: cpuTimes(),
    seed: processTimes(seed.pid),
    nodesGiB: 0,
    seedGiB: 0,
    calls: { announce: 0, lookup: 0, answers: {} as Record<string, number> },
    nodeAnswers: {} as Record<string, number>,
  };
  const daemons = await preheatThroughDaemons(cluster, hosts, {
    dir: join(work, `daemons-${++daemonPhases}-n${n}`),
    env,
    nodeFlags: cluster.opts.nodeFlags,
    warmRef,
    metricsPort: NODE_METRICS_PORT,
    onStart: async () => {
      at0 = {
        b0: cluster.registry.blobBytes(),
        w0: (await reg.counters()).tx,
        nodesGiB: await moved(hosts),
        seedGiB: await moved([cluster.seedHost]),
        calls: (await trackerCalls(cluster, SEED_METRICS_PORT)) ?? { announce: 0, lookup: 0, answers: {} },
        nodeAnswers: await nodeAnswers(hosts, NODE_METRICS_PORT),
        cpu: cpuTimes(),
        seed: processTimes(seed.pid),
      };
      stopTrace = flags.trace ? traceLinks(cluster, n, log) : undefined;
      if (warmRef) log(`N=${n}: warm-up done; the timed preheat starts`);
    },
  }).finally(() => stopTrace?.());
  try {
    const cpu = busySince(at0.cpu);
    const r = daemons.results;
    const st = processTimes(seed.pid);
    const nodeMovedGiB = ((await moved(hosts)) - at0.nodesGiB) / n;
    const seedMovedGiB = (await moved([cluster.seedHost])) - at0.seedGiB;
    const calls = await trackerCalls(cluster, SEED_METRICS_PORT);
    if (calls)
      log(
        `  tracker calls: ${calls.announce - at0.calls.announce} announces, ` +
          `${calls.lookup - at0.calls.lookup} lookups; the seed's block answers: ` +
          answersSince(calls.answers, at0.calls.answers),
      );
    log(
      `  the nodes' block answers: ${answersSince(await nodeAnswers(hosts, NODE_METRICS_PORT), at0.nodeAnswers)}`,
    );
    const nodeSys = r.reduce((a, x) => a + x.systemS, 0) / n;
    const nodeAll = r.reduce((a, x) => a + x.cpuS, 0) / n;
    log(
      `  cpu s: node mean user ${(nodeAll - nodeSys).toFixed(2)} system ${nodeSys.toFixed(2)}; seed user ` +
        `${(st.user - at0.seed.user).toFixed(2)} system ${(st.system - at0.seed.system).toFixed(2)}`,
    );
    return await dfnodeRow(mode, n, r, {
      b0: at0.b0,
      w0: at0.w0,
      cpu,
      nodeCpuS: r.reduce((a, x) => a + x.cpuS, 0) / n,
      seedCpuS: st.user + st.system - (at0.seed.user + at0.seed.system),
      nodeMovedGiB,
      seedMovedGiB,
    });
  } finally {
    await daemons.stop();
  }
}

/** direct: every host curls the blob from the registry at once. */
async function directPhase(n: number): Promise<Row> {
  const b0 = cluster.registry.blobBytes();
  const w0 = (await reg.counters()).tx;
  log(`N=${n}: direct download`);
  const cpu0 = cpuTimes();
  const d = await cluster.directDownload(cluster.nodes.slice(0, n));
  const cpu = busySince(cpu0);
  await settle();
  return {
    n,
    mode: 'direct',
    ...times(d.map((x) => x.ms)),
    egress: (cluster.registry.blobBytes() - b0) / size,
    egressWire: ((await reg.counters()).tx - w0) / size,
    verified: d.every((x) => x.bytes === size),
    cpu,
  };
}

/**
 * bittorrent: a fresh tracker and seeder (registry host), then an aria2c leecher in every host at once; each
 * timed from spawn to its completion hook. Registry egress is what the seeder uploaded (its own counter).
 */
async function bittorrentPhase(n: number, swarm: BtSwarm): Promise<Row> {
  await swarm.startSeeding();
  const w0 = (await reg.counters()).tx;
  const u0 = await swarm.seederUploaded();
  const seedCpu0 = swarm.seederCpuS();
  log(`N=${n}: bittorrent`);
  const cpu0 = cpuTimes();
  const leechers = swarm.startLeechers(cluster.nodes.slice(0, n));
  const r = await Promise.all(leechers.map((x) => x.result()));
  if (flags.trace) log(`  leechers (s): ${r.map((x) => `${x.host} ${(x.ms / 1000).toFixed(1)}`).join(', ')}`);
  const cpu = busySince(cpu0);
  const nodeCpuS = leechers.reduce((a, x) => a + x.cpuS(), 0) / n;
  const seedCpuS = swarm.seederCpuS() - seedCpu0;
  const up = (await swarm.seederUploaded()) - u0;
  const wire = (await reg.counters()).tx - w0;
  await settle();
  let verified = true;
  for (const x of leechers) verified &&= await x.verified();
  return {
    n,
    mode: 'bittorrent',
    ...times(r.map((x) => x.ms)),
    egress: up / size,
    egressWire: wire / size,
    fromPeers: 1 - up / (n * size),
    fromRegistry: up / (n * size),
    verified,
    cpu,
    nodeCpuS,
    seedCpuS,
  };
}

const aria2 = modes.has('bittorrent') ? versionOf('aria2c', ['--version']) : '';
try {
  log(
    `layer: ${size} B (${(size / 2 ** 20).toFixed(1)} MiB) DFB blob; hosts ${hostMbit} Mbit/s, registry ${registryMbit} Mbit/s`,
  );
  if (modes.has('bittorrent')) {
    bt = await BtSwarm.create({
      tracker: cluster.topo.host('tracker'),
      seeder: reg,
      files: cluster.layerFiles(),
      pieceBytes: btPieceBytes,
      workDir: work,
      exitWhenDone: flags['bt-exit-when-done'],
    });
    log(`torrent: ${bt.torrent}, info hash ${bt.infoHash}, pieces ${btPieceBytes / 1024} KiB; ${aria2}`);
  }
  for (const n of counts) {
    for (const mode of MODES) {
      if (!modes.has(mode)) continue;
      await settle();
      try {
        rows.push(
          mode === 'dfnode'
            ? await dfnodePhase(n)
            : mode === 'dfnode-run' || mode === 'dfnode-warm'
              ? await dfnodeRunPhase(n, mode)
              : mode === 'direct'
                ? await directPhase(n)
                : await bittorrentPhase(n, bt!),
        );
      } catch (err) {
        rows.push(failed(n, mode, err));
      } finally {
        if (mode.startsWith('dfnode')) await cluster.stopAll();
        if (mode === 'bittorrent') await bt!.stopAll();
      }
      log(`N=${n}: ${JSON.stringify(rows[rows.length - 1])}`);
    }
  }
} finally {
  await bt?.stopAll();
  if (!flags.keep) await cluster.destroy();
  else await cluster.stopAll();
  if (!flags.keep) await rm(work, { recursive: true, force: true });
}

process.stdout.write(
  `bench/p2p: ${(size / 2 ** 20).toFixed(1)} MiB DFB layer; hosts ${hostMbit} Mbit/s, registry host ${registryMbit} Mbit/s, ` +
    `links ${flags['link-queue']}` +
    (Object.keys(env).length ? `; ${JSON.stringify(env)}` : '') +
    (modes.has('bittorrent')
      ? `\nbittorrent: the DFB blob file, ${btPieceBytes / 1024} KiB pieces, opentracker on a host of its own, ` +
        `one aria2c seeder on the registry host; leechers ${flags['bt-exit-when-done'] ? 'exit when complete' : 'seed until all are done'} (${aria2})`
      : '') +
    '\n\n' +
    rowsTable(rows, gib) +
    '\n\n',
);

const row = (mode: Mode, n: number) => rows.find((x) => x.mode === mode && x.n === n);
const one = Math.min(...counts);
const ratio = (a?: Row, b?: Row) => (a && b ? a.meanS / b.meanS : NaN);
const f2 = (x: number) => (Number.isNaN(x) ? 'n/a' : x.toFixed(2));
type Ratios = { meanVsOneHost: number; meanVsDirect: number; meanVsBittorrent: number; egress: number };
/** By dfnode mode (dfnode, dfnode-run, dfnode-warm), then by N. */
const ratios: Record<string, Record<string, Ratios>> = {};
const oneVsDirect: Record<string, number> = {};
for (const mode of ['dfnode', 'dfnode-run', 'dfnode-warm'] as const) {
  if (!modes.has(mode)) continue;
  const byN: Record<string, Ratios> = (ratios[mode] = {});
  for (const n of counts) {
    const p = row(mode, n);
    const r: Ratios = (byN[n] = {
      meanVsOneHost: ratio(p, row(mode, one)),
      meanVsDirect: ratio(p, row('direct', n)),
      meanVsBittorrent: ratio(p, row('bittorrent', n)),
      egress: p?.egress ?? NaN,
    });
    process.stdout.write(
      `N=${n}: ${mode} mean ${f2(r.meanVsOneHost)}× the ${one}-host mean (target ≤ 1.3), ` +
        `${f2(r.meanVsBittorrent)}× BitTorrent's (target ≤ 1), ${f2(r.meanVsDirect)}× direct; registry egress ` +
        `${f2(r.egress)}× (target ≤ 1.1) vs ${f2(row('bittorrent', n)?.egress ?? NaN)}× BitTorrent, ` +
        `${f2(row('direct', n)?.egress ?? NaN)}× direct\n`,
    );
  }
  oneVsDirect[mode] = ratio(row(mode, 1), row('direct', 1));
  if (counts.includes(1))
    process.stdout.write(`N=1: ${mode} ${f2(oneVsDirect[mode])}× a direct download (target ≤ 1.05)\n`);
}
process.stdout.write(
  JSON.stringify({
    bench: 'p2p',
    layerBytes: size,
    hostMbit,
    registryMbit,
    env,
    bittorrent: modes.has('bittorrent')
      ? { pieceBytes: btPieceBytes, exitWhenDone: flags['bt-exit-when-done'], aria2 }
      : undefined,
    rows,
    ratios,
    oneVsDirect,
  }) + '\n',
);
