// bench/tracker-load: what one tracker call costs a seed, end to end (the block server's HTTP parsing, the
// token check, the protobuf codec, the tracker's tables, the answer's socket write), against the tracker's
// logic alone (TrackerState in this process: what bench/p2p-sim times per call). A `dfnode seed` on
// loopback; P simulated peers of one blob of U units, each holding a random share of them, announce in full
// once; then, C calls in flight, the peers send deltas (a few added units each, as a filling node's
// announce every 100 ms carries), lookups (their missing units, 32 holders at most), and deltas that carry
// a lookup (one call for both, as nodes send them since 2026-12-07), one kind after the other. Seed
// CPU is user + system from /proc/PID/stat over each phase. Prints µs of seed CPU per call, how many calls
// per second one core answers, and what the call rates of filling nodes measured in bench/p2p (announces
// and lookups per node per second) cost per 1,000 hosts; the last line of stdout is JSON.
//
//   node dist/bench/tracker-load.js [--peers 256] [--mib 64] [--calls 20000] [--concurrency 16]
//                                   [--announces-per-s 5.5] [--lookups-per-s 2.6] [--cpu-prof DIR]
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { HttpTracker } from '../src/p2p/tracker-http.js';
import { answerAnnounce } from '../src/p2p/tracker-service.js';
import { TrackerState } from '../src/p2p/tracker-state.js';
import { freeLoopbackPort } from '../src/util/free-port.js';
import { benchLog, gitState, nodeFlagsFrom, runMain } from './lib/main.js';
import { formatTable, processCpu } from './lib/measure.js';
import { LOCAL_HOST, NsProc } from './lib/ns-proc.js';
import { cli, repoRoot } from './lib/p2p-cluster.js';

const TOKEN = 'tracker-load-bench-token';
const UNIT = 64 * 1024;
const log = benchLog('tracker-load');

const { values: flags } = parseArgs({
  options: {
    peers: { type: 'string', default: '256' },
    mib: { type: 'string', default: '64' },
    calls: { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '16' },
    'announces-per-s': { type: 'string', default: '5.5' },
    'lookups-per-s': { type: 'string', default: '2.6' },
    'cpu-prof': { type: 'string' },
    'node-flags': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
});

type Kind = 'announce' | 'lookup' | 'both';

interface Peer {
  id: string;
  address: string;
  bits: Uint8Array;
  client: HttpTracker;
}

async function main(): Promise<number> {
  if (flags.help) {
    process.stdout.write(
      'node dist/bench/tracker-load.js [--peers 256] [--mib 64] [--calls 20000] [--concurrency 16]\n' +
        '  [--announces-per-s 5.5] [--lookups-per-s 2.6] [--cpu-prof DIR] [--node-flags "FLAGS"]\n' +
        '  --cpu-prof DIR: a V8 CPU profile of the seed into DIR; --node-flags: more Node.js flags for it\n' +
        '  --announces-per-s / --lookups-per-s: calls per filling node per second (bench/p2p at N = 16:\n' +
        '    about 5.5 and 2.6), for the cores-per-1,000-hosts column\n',
    );
    return 0;
  }
  const peersN = Number(flags.peers);
  const units = Math.ceil((Number(flags.mib) * 2 ** 20) / UNIT);
  const calls = Number(flags.calls);
  const conc = Number(flags.concurrency);
  if (![peersN, units, calls, conc].every((x) => Number.isInteger(x) && x > 0)) {
    log('--peers, --mib, --calls and --concurrency take positive integers');
    return 2;
  }
  const blob = `sha256:${randomBytes(32).toString('hex')}`;
  const root = repoRoot();
  const work = await mkdtemp(join(root, '.tmp', 'tracker-load-'));
  const port = await freeLoopbackPort();
  const seed = NsProc.spawn(
    'seed',
    LOCAL_HOST,
    process.execPath,
    [
      ...nodeFlagsFrom(flags),
      cli('dfnode', true),
      'seed',
      '--cache-dir',
      join(work, 'cache'),
      '--state-dir',
      join(work, 'state'),
      '--p2p-listen',
      `127.0.0.1:${port}`,
    ],
    { DFNODE_LOG_LEVEL: 'warn', DFNODE_P2P_CLUSTER_TOKEN: TOKEN },
  );
  const peers: Peer[] = [];
  try {
    await seed.waitLine(/^seed serving /, 60_000);
    const address = `127.0.0.1:${port}`;
    const bytes = Math.ceil(units / 8);
    for (let i = 0; i < peersN; i++) {
      // each peer holds a random half of the blob (a swarm midway through its fill)
      const bits = new Uint8Array(bytes);
      for (let u = 0; u < units; u++) if (Math.random() < 0.5) bits[u >> 3]! |= 1 << (u & 7);
      peers.push({
        id: `bench-peer-${i}`,
        address: `127.0.0.1:${20_000 + i}`,
        bits,
        client: new HttpTracker(address, TOKEN, 10_000, undefined, () => {
          throw new Error('the seed has no HTTP tracker');
        }),
      });
    }
    const announceMsg = (p: Peer, full: boolean, added: number[]) => ({
      blob,
      units,
      peer_id: p.id,
      address: p.address,
      zone: '',
      load: 0,
      full,
      bitmap: full ? p.bits : new Uint8Array(0),
      added,
      leave: false,
      failed_peers: [] as string[],
    });
    const lookupMsg = (p: Peer) => ({
      blob,
      peer_id: p.id,
      zone: '',
      want: [] as number[],
      max_peers: 32,
      want_bitmap: p.bits.map((b) => ~b & 0xff),
    });
    // a delta: 4 units this peer lacks (a 256 KiB store of a run), marked held from then on
    const addSome = (p: Peer): number[] => {
      const out: number[] = [];
      for (let k = 0; k < 64 && out.length < 4; k++) {
        const u = Math.floor(Math.random() * units);
        if (p.bits[u >> 3]! & (1 << (u & 7))) continue;
        p.bits[u >> 3]! |= 1 << (u & 7);
        out.push(u);
      }
      return out;
    };

    // the same calls through the tracker's logic alone, in this process (what the simulation times)
    const state = new TrackerState({ announceIntervalMs: 1000 });
    const logic = { announce: 0, lookup: 0, both: 0 };
    const time = (k: Kind, f: () => unknown) => {
      const t0 = performance.now();
      f();
      logic[k] += (performance.now() - t0) * 1000;
    };

    log(`${peersN} peers of a ${units}-unit blob announce in full`);
    for (const p of peers) {
      await p.client.announce(announceMsg(p, true, []));
      state.announce(announceMsg(p, true, []), '127.0.0.1');
    }
    const phase = async (kind: Kind) => {
      let next = 0;
      let n = 0;
      const cpu0 = processCpu(seed.pid);
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: conc }, async () => {
          while (n < calls) {
            n++;
            const p = peers[next++ % peers.length]!;
            if (kind === 'announce') {
              const m = announceMsg(p, false, addSome(p));
              await p.client.announce(m);
              time('announce', () => state.announce(m, '127.0.0.1'));
            } else if (kind === 'both') {
              // the lookup a node sends with its announce (AnnounceRequest.lookup_max_peers)
              const m = { ...announceMsg(p, false, addSome(p)), lookup_want: lookupMsg(p).want_bitmap };
              const look = { ...m, lookup_max_peers: 32 };
              const r = await p.client.announce(look);
              if (!r.lookup?.holders?.length) throw new Error('the announce came back without the lookup');
              time('both', () => answerAnnounce(state, look, '127.0.0.1'));
            } else {
              const m = lookupMsg(p);
              await p.client.lookup(m);
              time('lookup', () => state.lookup(m));
            }
          }
        }),
      );
      const wallS = (performance.now() - t0) / 1000;
      const cpuS = processCpu(seed.pid) - cpu0;
      return { kind, calls: n, wallS, cpuS, usPerCall: (cpuS * 1e6) / n, logicUs: logic[kind] / n };
    };
    log(`${calls} announces (deltas of 4 units), ${conc} in flight`);
    const a = await phase('announce');
    log(`${calls} lookups (missing units, 32 holders at most), ${conc} in flight`);
    const l = await phase('lookup');
    log(`${calls} announces carrying a lookup (one call for both), ${conc} in flight`);
    const b = await phase('both');

    const aRate = Number(flags['announces-per-s']);
    const lRate = Number(flags['lookups-per-s']);
    // cores a tracker needs for 1,000 filling hosts at the measured per-node call rates
    const perThousand = (usA: number, usL: number) => (1000 * (aRate * usA + lRate * usL)) / 1e6;
    // the same rates when every lookup rides on an announce: lRate of the aRate calls carry one
    const folded = (usA: number, usB: number) =>
      (1000 * ((aRate - Math.min(aRate, lRate)) * usA + lRate * usB)) / 1e6;
    const rows = [a, l, b];
    process.stdout.write(
      `tracker-load: ${peersN} peers, blob of ${units} units (${flags.mib} MiB), ${calls} calls per kind, ` +
        `${conc} in flight; commit ${gitState(root, ['src', 'bench'])}, load average ${loadavg()
          .map((x) => x.toFixed(2))
          .join(' ')}\n` +
        formatTable(
          [
            'call',
            'calls',
            'wall s',
            'calls/s',
            'seed CPU s',
            'µs/call (seed)',
            'µs/call (logic)',
            '× logic',
          ],
          rows.map((r) => [
            r.kind,
            String(r.calls),
            r.wallS.toFixed(1),
            (r.calls / r.wallS).toFixed(0),
            r.cpuS.toFixed(2),
            r.usPerCall.toFixed(0),
            r.logicUs.toFixed(1),
            (r.usPerCall / r.logicUs).toFixed(1),
          ]),
        ) +
        `\nAt ${aRate} announces and ${lRate} lookups per filling host per second: ` +
        `${perThousand(a.usPerCall, l.usPerCall).toFixed(2)} seed cores per 1,000 hosts as separate calls, ` +
        `${folded(a.usPerCall, b.usPerCall).toFixed(2)} with the lookups carried by announces ` +
        `(the logic alone: ${perThousand(a.logicUs, l.logicUs).toFixed(2)})\n`,
    );
    process.stdout.write(
      JSON.stringify({
        bench: 'tracker-load',
        peers: peersN,
        units,
        concurrency: conc,
        rows,
        coresPerThousandHosts: perThousand(a.usPerCall, l.usPerCall),
        coresPerThousandHostsFolded: folded(a.usPerCall, b.usPerCall),
        logicCoresPerThousandHosts: perThousand(a.logicUs, l.logicUs),
      }) + '\n',
    );
    return 0;
  } finally {
    for (const p of peers) p.client.close();
    await seed.stop();
    await rm(work, { recursive: true, force: true });
  }
}

runMain(main, log);
