// One layer to N hosts through dfnode's P2P tier, simulated (bench/lib/p2p-sim.ts): the real planner and
// tracker on a virtual clock, simulated links. Prints a table, writes an SVG plot, and with --calibrate
// compares the simulation of bench/p2p's topology with bench/p2p results given on the command line.
//
//   node dist/bench/p2p-sim.js [--hosts 16,64,256,1000] [--mib 64] [--runs 3] [--svg FILE] [--json]
//   node dist/bench/p2p-sim.js --calibrate 4:38.3,8:49.7,16:59.8 [--mib 57.9]
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { DEFAULT_SIM, simulate, type SimParams, type SimResult } from './lib/p2p-sim.js';
import { formatTable } from './lib/measure.js';
import { svgLinePlot } from './lib/svg-plot.js';

const { values: flags } = parseArgs({
  options: {
    hosts: { type: 'string', default: '16,64,256,1000' },
    mib: { type: 'string', default: '64' },
    runs: { type: 'string', default: '3' },
    'node-mbit': { type: 'string', default: String(DEFAULT_SIM.nodeMbit) },
    'seed-mbit': { type: 'string', default: String(DEFAULT_SIM.seedMbit) },
    'registry-mbit': { type: 'string', default: String(DEFAULT_SIM.registryMbit) },
    'max-peers-per-blob': { type: 'string', default: String(DEFAULT_SIM.maxPeersPerBlob) },
    'start-spread-ms': { type: 'string', default: '0' },
    'lookup-candidates': { type: 'string', default: String(DEFAULT_SIM.lookupCandidates) },
    'upload-slots': { type: 'string', default: String(DEFAULT_SIM.uploadSlots) },
    'slot-wait-ms': { type: 'string', default: String(DEFAULT_SIM.slotWaitMs) },
    'slot-waiters': { type: 'string', default: String(DEFAULT_SIM.slotWaiters) },
    'busy-backoff-ms': { type: 'string', default: String(DEFAULT_SIM.busyBackoffMs) },
    'send-buffer-kib': { type: 'string', default: String(DEFAULT_SIM.sendBufferBytes / 1024) },
    'busy-retry-ms': { type: 'string', default: String(DEFAULT_SIM.busyRetryMs) },
    'max-run-mib': { type: 'string', default: String(DEFAULT_SIM.maxRunBytes / 2 ** 20) },
    'mid-run-kib': { type: 'string', default: String(DEFAULT_SIM.midRunBytes / 1024) },
    calibrate: { type: 'string' },
    'machine-cores': { type: 'string', default: '2' },
    'cpu-recv': { type: 'string', default: '35' },
    'cpu-send': { type: 'string', default: '35' },
    'startup-cpu-s': { type: 'string', default: '0.5' },
    // a tracker call's cost on the seed beyond the tracker's logic (HTTP, codec, socket write): bench/tracker-load
    'tracker-call-us': { type: 'string', default: '100' },
    svg: { type: 'string' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});

if (flags.help) {
  process.stdout.write(
    'node dist/bench/p2p-sim.js [--hosts 16,64,256,1000] [--mib 64] [--runs 3] [--svg FILE] [--json]\n' +
      '  [--node-mbit 20] [--seed-mbit 20] [--registry-mbit 40] [--max-peers-per-blob 16384] [--start-spread-ms 0]\n' +
      '  [--max-run-mib 4] (largest peer run of the fill planner, as p2pFill maxRunBytes)\n' +
      '  [--lookup-candidates 256] (holders a tracker lookup scores, TrackerLimits.lookupCandidates)\n' +
      '  [--upload-slots 4] (fill runs a node uploads at once, p2p.uploadSlots)\n' +
      '  [--slot-wait-ms 150] [--slot-waiters 1] (how long a run waits for a taken slot before the 429, and\n' +
      '    how many may wait at one holder; a wait of 0: refused at once)\n' +
      "  [--send-buffer-kib 64] (a holder's slot is free once this much of its run is left in its socket's send queue)\n" +
      "  [--mid-run-kib 256] (a run's arrived units are stored and announced per this much, as RunWriter; 0: at its end)\n" +
      '  [--tracker-call-us 100] (seed CPU per tracker call beyond the tracker logic timed here: HTTP, codec,\n' +
      '    socket; measured by bench/tracker-load), for the tracker core column\n' +
      'node dist/bench/p2p-sim.js --calibrate N:MEAN_S,... [--mib 57.9] [--machine-cores 2] [--cpu-recv 35]\n' +
      '  [--cpu-send 35] [--startup-cpu-s 0.5]\n' +
      '  --calibrate: simulate bench/p2p (all hosts on one machine of --machine-cores cores, each host spending\n' +
      '    --cpu-recv / --cpu-send CPU-s per GiB and --startup-cpu-s to start) and compare with the measured means\n',
  );
  process.exit(0);
}

const num = (k: keyof typeof flags) => Number(flags[k]);
const runs = Math.max(1, num('runs'));
const base: SimParams = {
  ...DEFAULT_SIM,
  blobBytes: Math.round(num('mib') * 2 ** 20),
  nodeMbit: num('node-mbit'),
  seedMbit: num('seed-mbit'),
  registryMbit: num('registry-mbit'),
  maxPeersPerBlob: num('max-peers-per-blob'),
  startSpreadMs: num('start-spread-ms'),
  maxRunBytes: Math.round(num('max-run-mib') * 2 ** 20),
  midRunBytes: Math.round(num('mid-run-kib') * 1024),
  lookupCandidates: num('lookup-candidates'),
  uploadSlots: num('upload-slots'),
  slotWaitMs: num('slot-wait-ms'),
  slotWaiters: num('slot-waiters'),
  busyBackoffMs: num('busy-backoff-ms'),
  sendBufferBytes: Math.round(num('send-buffer-kib') * 1024),
  busyRetryMs: num('busy-retry-ms'),
};

interface Row {
  n: number;
  meanS: number;
  maxS: number;
  finished: number;
  egress: number;
  peers: number;
  seed: number;
  refused: number;
  timeouts: number;
  busy: number;
  peakUploads: number;
  announceUs: number;
  lookupUs: number;
  planUs: number;
  /**
   * Tracker calls per second over the spread, and the share of one core the tracker takes: the real tracker
   * code's time here plus --tracker-call-us per call (what a call costs a seed beyond that, measured).
   */
  trackerCallsPerS: number;
  trackerCore: number;
  bitmapBytes: number;
  wallS: number;
  measured?: number;
}

function row(n: number, rs: SimResult[]): Row {
  const avg = (f: (r: SimResult) => number) => rs.reduce((a, r) => a + f(r), 0) / rs.length;
  const span = avg((r) => Math.max(r.maxS, 1e-3));
  const calls = avg((r) => r.calls);
  const trackerUs = avg(
    (r) => r.announceUs * r.announces + r.lookupUs * r.lookups + num('tracker-call-us') * r.calls,
  );
  return {
    n,
    meanS: avg((r) => r.meanS),
    maxS: Math.max(...rs.map((r) => r.maxS)),
    finished: Math.min(...rs.map((r) => r.finished)),
    egress: avg((r) => r.registryEgress),
    peers: avg((r) => r.fromPeers),
    seed: avg((r) => r.fromSeed),
    refused: avg((r) => r.refusedAnnounces),
    timeouts: avg((r) => r.peerTimeouts),
    busy: avg((r) => r.busyRefusals),
    peakUploads: Math.max(...rs.map((r) => r.peakNodeUploads)),
    announceUs: avg((r) => r.announceUs),
    lookupUs: avg((r) => r.lookupUs),
    planUs: avg((r) => r.planUs),
    trackerCallsPerS: calls / span,
    trackerCore: trackerUs / 1e6 / span,
    bitmapBytes: Math.max(...rs.map((r) => r.trackerBitmapBytes)),
    wallS: avg((r) => r.wallMs) / 1000,
  };
}

function run(n: number, p: SimParams): Row {
  const rs: SimResult[] = [];
  for (let k = 0; k < runs; k++) {
    const r = simulate({ ...p, hosts: n, rngSeed: 1 + k });
    rs.push(r);
    process.stderr.write(
      `N=${n} run ${k + 1}/${runs}: mean ${r.meanS.toFixed(1)} s, max ${r.maxS.toFixed(1)} s, ${r.finished}/${n} done, ` +
        `${(r.wallMs / 1000).toFixed(1)} s of simulation\n`,
    );
  }
  return row(n, rs);
}

const rows: Row[] = [];
if (flags.calibrate) {
  // bench/p2p: every host a process on this machine: they share its cores (CPU per GiB as measured by
  // bench/p2p's cpu columns), and start one after another as their processes load (startup CPU each).
  for (const part of flags.calibrate.split(',')) {
    const [ns, ms] = part.split(':');
    const n = Number(ns);
    const cores = num('machine-cores');
    const r = run(n, {
      ...base,
      machineCores: cores,
      cpuRecvSecPerGiB: num('cpu-recv'),
      cpuSendSecPerGiB: num('cpu-send'),
      startSpreadMs: ((n + 1) * num('startup-cpu-s') * 1000) / cores,
    });
    r.measured = Number(ms);
    rows.push(r);
  }
} else for (const n of flags.hosts!.split(',').map(Number)) rows.push(run(n, base));

const one = rows.find((r) => r.n === 1)?.meanS;
const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
const header = [
  'N',
  'mean s',
  'max s',
  ...(flags.calibrate ? ['measured s', 'sim/measured'] : []),
  'done',
  'registry ×',
  'peers',
  'seed',
  'refused ann.',
  'peer timeouts',
  'busy refusals',
  'peak uploads',
  'µs/announce',
  'µs/lookup',
  'µs/plan',
  'tracker calls/s',
  'tracker core',
  'tracker bitmaps',
  'sim s',
];
const lines = rows.map((r) => [
  String(r.n),
  r.meanS.toFixed(1),
  r.maxS.toFixed(1),
  ...(r.measured !== undefined ? [r.measured.toFixed(1), (r.meanS / r.measured).toFixed(2)] : []),
  `${r.finished}/${r.n}`,
  r.egress.toFixed(2),
  pct(r.peers),
  pct(r.seed),
  r.refused.toFixed(0),
  r.timeouts.toFixed(0),
  r.busy.toFixed(0),
  String(r.peakUploads),
  r.announceUs.toFixed(1),
  r.lookupUs.toFixed(1),
  r.planUs.toFixed(1),
  r.trackerCallsPerS.toFixed(0),
  pct(r.trackerCore),
  `${(r.bitmapBytes / 1024).toFixed(0)} KiB`,
  r.wallS.toFixed(1),
]);
process.stdout.write(
  `layer ${(base.blobBytes / 2 ** 20).toFixed(1)} MiB, hosts ${base.nodeMbit} Mbit/s, seed ${base.seedMbit}, registry ` +
    `${base.registryMbit}; ${runs} run(s) per N (means; max over runs)\n${formatTable(header, lines)}\n`,
);
if (one)
  process.stdout.write(
    `mean / one host: ${rows.map((r) => `N=${r.n} ${(r.meanS / one).toFixed(2)}×`).join(', ')}\n`,
  );
if (flags.calibrate) {
  const worst = Math.max(...rows.map((r) => Math.abs(r.meanS / r.measured! - 1)));
  process.stdout.write(
    `largest deviation from bench/p2p: ${(worst * 100).toFixed(0)}% (trusted past it only within 20%)\n`,
  );
}
if (flags.json) process.stdout.write(JSON.stringify({ params: base, runs, rows }) + '\n');
if (flags.svg) {
  writeFileSync(
    flags.svg,
    svgLinePlot({
      title: `dfnode P2P, simulated: one ${(base.blobBytes / 2 ** 20).toFixed(0)} MiB layer to N hosts`,
      xLabel: 'hosts (N, log scale)',
      yLabel: 'fill time (s)',
      logX: true,
      series: [
        { name: 'mean', points: rows.map((r) => [r.n, r.meanS]) },
        { name: 'max', points: rows.map((r) => [r.n, r.maxS]) },
        ...(flags.calibrate
          ? [{ name: 'bench/p2p mean', points: rows.map((r) => [r.n, r.measured!] as [number, number]) }]
          : []),
      ],
    }),
  );
  process.stderr.write(`plot written to ${flags.svg}\n`);
}
