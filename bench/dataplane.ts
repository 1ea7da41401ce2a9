// bench/dataplane: CPU per GiB of the P2P data plane, on loopback (no namespaces, no shaping). A synthetic
// layer (≥ 256 MiB of DFB blob) is converted into a local docker-registry, put into a seed's cache with a
// direct `dfnode preheat`, and served by `dfnode seed`; then, per run, node A (`dfnode preheat --serve`) takes
// the whole blob from the seed, and node B takes it from node A (a peer serving from its cache); last, node C
// takes it from the registry alone (no P2P: what every node pays without the tier). Prints the
// CPU seconds (user + system, /proc/PID/stat) per GiB moved of each process, their ratio to the 15 CPU-s/GiB
// target, and wall time; the last line of stdout is JSON.
//
// With --link-mbit R, the seed's and node A's block servers are reached through a proxy that sends their
// answers at R Mbit/s in small slices (bench/lib/paced-proxy.ts), as a slow link delivers them.
//
//   node dist/bench/dataplane.js [--mib 256] [--runs 1] [--link-mbit R] [--cpu-prof DIR]
//                                [--node-flags "FLAGS"] [--keep] [--unbundled]
import { stat } from 'node:fs/promises';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { freeLoopbackPort } from '../src/util/free-port.js';
import { benchLog, gitState, nodeFlagsFrom, runMain } from './lib/main.js';
import { formatTable, median, processCpu, threadCpu } from './lib/measure.js';
import { LOCAL_HOST, NsProc } from './lib/ns-proc.js';
import { NsRegistry } from './lib/ns-registry.js';
import { cacheVerifies, cli, repoRoot } from './lib/p2p-cluster.js';
import { PacedProxy } from './lib/paced-proxy.js';
import { writeSyntheticImage } from './lib/synthetic-image.js';

const TARGET = 15;
const GIB = 1024 ** 3;
const TOKEN = 'dataplane-bench-token';
const log = benchLog('dataplane');

const { values: flags } = parseArgs({
  options: {
    mib: { type: 'string', default: '256' },
    runs: { type: 'string', default: '1' },
    'link-mbit': { type: 'string', default: '0' },
    'cpu-prof': { type: 'string' },
    'node-flags': { type: 'string' },
    'work-dir': { type: 'string' },
    keep: { type: 'boolean', default: false },
    unbundled: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
});

/** CPU and cached bytes of a process sampled every 50 ms, so that its start-up can be told apart. */
class CpuTrace {
  readonly samples: { cpu: number; bytes: number }[] = [];
  private timer: NodeJS.Timeout;

  constructor(
    readonly pid: number,
    dataFile?: string,
  ) {
    const sample = async () => {
      const cpu = processCpu(pid);
      const st = dataFile ? await stat(dataFile).catch(() => undefined) : undefined;
      if (Number.isFinite(cpu)) this.samples.push({ cpu, bytes: st ? st.blocks * 512 : 0 });
    };
    void sample();
    this.timer = setInterval(() => void sample(), 50);
  }

  /** CPU seconds now (and stops sampling). */
  stop(): number {
    clearInterval(this.timer);
    return processCpu(this.pid);
  }

  get first(): number {
    return this.samples[0]?.cpu ?? Number.NaN;
  }

  /** CPU seconds used before the first MiB of block data reached the cache file (module loading, TOC). */
  get startup(): number {
    const i = this.samples.findIndex((s) => s.bytes >= 1024 * 1024);
    return i > 0 ? this.samples[i - 1]!.cpu : Number.NaN;
  }
}

interface Row {
  role: string;
  cpu: number;
  startup?: number;
  bytes: number;
  wall: number;
}

/** A paced proxy for a seed's block server and an unpaced one for its tracker, on two adjacent ports. */
async function proxyPair(seedPort: number, rate: number): Promise<[PacedProxy, PacedProxy]> {
  for (let i = 0; ; i++) {
    const block = await PacedProxy.start(0, seedPort, rate);
    try {
      return [block, await PacedProxy.start(block.port + 1, seedPort + 1, 0)];
    } catch (err) {
      await block.close();
      if (i >= 20) throw err;
    }
  }
}

/** A process's CPU, main thread and others, user + system, for stderr. */
function threads(pid: number): string {
  return Object.entries(threadCpu(pid))
    .map(([name, t]) => `${name} ${t.user.toFixed(2)}u+${t.sys.toFixed(2)}s`)
    .join(', ');
}

const perGib = (cpu: number, bytes: number) => cpu / (bytes / GIB);

async function main(): Promise<number> {
  if (flags.help) {
    process.stdout.write(
      'node dist/bench/dataplane.js [--mib 256] [--runs 1] [--link-mbit R] [--cpu-prof DIR] [--node-flags "FLAGS"]\n' +
        '  [--work-dir DIR] [--keep] [--unbundled]\n',
    );
    return 0;
  }
  const root = repoRoot();
  const base = flags['work-dir'] ?? join(root, '.tmp', 'bench');
  await mkdir(base, { recursive: true });
  const work = await mkdtemp(join(base, 'dataplane-'));
  const nodeFlags = nodeFlagsFrom(flags);
  const procs: NsProc[] = [];
  const proxies: PacedProxy[] = [];
  const registry = await NsRegistry.start(LOCAL_HOST, join(work, 'registry'), await freeLoopbackPort());
  try {
    const mib = Number(flags.mib);
    // 75 % incompressible file data: the DFB blob comes out at ~0.76 of it (native LZ4)
    const img = await writeSyntheticImage(join(work, 'image'), {
      bytes: Math.round((mib * 1024 * 1024) / 0.74),
      files: 4,
      incompressible: 0.75,
    });
    log(`converting the ${img.layerSize}-byte layer into the registry at ${registry.localHost}`);
    const ref = `${registry.localHost}/syn:1-dfb`;
    await LOCAL_HOST.exec(process.execPath, [
      cli('dfconvert'),
      '--plain-http',
      '--quiet',
      '--work-dir',
      join(work, 'dfwork'),
      `oci:${img.dir}:${img.tag}`,
      ref,
    ]);
    const man = await LOCAL_HOST.exec('curl', [
      '-sf',
      '-H',
      'accept: application/vnd.oci.image.manifest.v1+json',
      `http://${registry.localHost}/v2/syn/manifests/1-dfb`,
    ]);
    const layers = (JSON.parse(man.stdout) as { layers: { digest: string; size: number }[] }).layers;
    const blob = layers[0]!;
    const dataFile = (cacheDir: string) => join(cacheDir, 'blobs', 'sha256', blob.digest.slice(7), 'data');

    const dfnode = (label: string, args: string[]) => {
      const p = NsProc.spawn(
        label,
        LOCAL_HOST,
        process.execPath,
        [...nodeFlags, cli('dfnode', !flags.unbundled), ...args],
        {
          DFNODE_LOG_LEVEL: 'warn',
          DFNODE_P2P_CLUSTER_TOKEN: TOKEN,
          DFNODE_P2P_SEED_REGISTRIES: '*',
        },
      );
      procs.push(p);
      return p;
    };
    const dirs = (name: string) => [
      '--cache-dir',
      join(work, name, 'cache'),
      '--state-dir',
      join(work, name, 'state'),
    ];

    log(`filling the seed's cache from the registry (${blob.size} bytes)`);
    const fill = dfnode('fill', ['preheat', '--plain-http', '--json', ...dirs('seed'), ref]);
    await fill.waitLine(/^\{.*\}$/);
    await fill.exited;

    // the seed's tracker listens on the next port
    const seedPort = await freeLoopbackPort();
    const seed = dfnode('seed', [
      'seed',
      '--plain-http',
      ...dirs('seed'),
      '--p2p-listen',
      `127.0.0.1:${seedPort}`,
    ]);
    await seed.waitLine(/^seed serving /, 60_000);
    const rate = (Number(flags['link-mbit']) * 1e6) / 8;
    let seedAddr = `127.0.0.1:${seedPort}`;
    if (rate) {
      const [block, tracker] = await proxyPair(seedPort, rate);
      proxies.push(block, tracker);
      seedAddr = `127.0.0.1:${block.port}`;
    }

    const runs = Number(flags.runs);
    const all: Row[][] = [];
    for (let run = 1; run <= runs; run++) {
      const node = async (name: string) => {
        const port = await freeLoopbackPort();
        const args = ['preheat', '--plain-http', '--serve', '--json', ...dirs(`run${run}-${name}`)];
        if (rate) {
          const proxy = await PacedProxy.start(0, port, rate);
          proxies.push(proxy);
          args.push('--advertise', `127.0.0.1:${proxy.port}`);
        }
        const p = dfnode(name, [...args, '--seeds', seedAddr, '--p2p-listen', `127.0.0.1:${port}`, ref]);
        return { p, trace: new CpuTrace(p.pid, dataFile(join(work, `run${run}-${name}`, 'cache'))) };
      };
      const rows: Row[] = [];
      // phase 1: seed → node A
      let seedTrace = new CpuTrace(seed.pid);
      const a = await node('nodeA');
      const la = await a.p.waitLine(/^\{.*\}$/);
      const aCpu = processCpu(a.p.pid);
      log(`run ${run}: node A threads: ${threads(a.p.pid)}; seed threads: ${threads(seed.pid)}`);
      const aTrace = a.trace;
      const seedCpu1 = seedTrace.stop() - seedTrace.first;
      const aBytes = (JSON.parse(la.line) as { bytes: number }).bytes;
      rows.push({ role: 'seed serving (seed → A)', cpu: seedCpu1, bytes: aBytes, wall: la.at / 1000 });
      rows.push({
        role: 'node A fetching from the seed',
        cpu: aCpu,
        startup: aTrace.startup,
        bytes: aBytes,
        wall: la.at / 1000,
      });
      aTrace.stop();
      // phase 2: node A → node B (the planner takes from a neighbour what a neighbour holds)
      seedTrace = new CpuTrace(seed.pid);
      const aServe = new CpuTrace(a.p.pid);
      const b = await node('nodeB');
      const lb = await b.p.waitLine(/^\{.*\}$/);
      const bCpu = processCpu(b.p.pid);
      log(`run ${run}: node B threads: ${threads(b.p.pid)}; node A threads: ${threads(a.p.pid)}`);
      const jb = JSON.parse(lb.line) as { bytes: number; bySource: Record<string, number> };
      const aServeCpu = aServe.stop() - aServe.first;
      const seedCpu2 = seedTrace.stop() - seedTrace.first;
      const fromPeers = jb.bySource.peer ?? 0;
      rows.push({ role: 'node A serving (A → B)', cpu: aServeCpu, bytes: fromPeers, wall: lb.at / 1000 });
      rows.push({
        role: 'node B fetching from A',
        cpu: bCpu,
        startup: b.trace.startup,
        bytes: jb.bytes,
        wall: lb.at / 1000,
      });
      rows.push({
        role: 'seed (tracker only) during A → B',
        cpu: seedCpu2,
        bytes: jb.bytes,
        wall: lb.at / 1000,
      });
      b.trace.stop();
      const ok =
        (await cacheVerifies(join(work, `run${run}-nodeA`, 'cache'), layers)) &&
        (await cacheVerifies(join(work, `run${run}-nodeB`, 'cache'), layers));
      log(`run ${run}: B took ${fromPeers} of ${jb.bytes} bytes from peers; caches verify: ${ok}`);
      if (!ok) throw new Error('a node cache does not hash to the blob digest');
      await Promise.all([a.p.stop(), b.p.stop()]);
      // phase 3: node C alone, from the registry (no P2P: the baseline a cluster without dfnode's tier pays)
      let cRef = ref;
      if (rate) {
        const proxy = await PacedProxy.start(0, Number(registry.localHost.split(':')[1]), rate);
        proxies.push(proxy);
        cRef = `127.0.0.1:${proxy.port}/syn:1-dfb`;
      }
      const c = dfnode('nodeC', ['preheat', '--plain-http', '--json', ...dirs(`run${run}-nodeC`), cRef]);
      const cTrace = new CpuTrace(c.pid, dataFile(join(work, `run${run}-nodeC`, 'cache')));
      const lc = await c.waitLine(/^\{.*\}$/);
      const cCpu = processCpu(c.pid);
      const jc = JSON.parse(lc.line) as { bytes: number; bySource: Record<string, number> };
      rows.push({
        role: 'node C from the registry',
        cpu: cCpu,
        startup: cTrace.startup,
        bytes: jc.bytes,
        wall: lc.at / 1000,
      });
      cTrace.stop();
      await c.exited;
      if (!(await cacheVerifies(join(work, `run${run}-nodeC`, 'cache'), layers)))
        throw new Error("node C's cache does not hash to the blob digest");
      all.push(rows);
    }

    const commit = gitState(root, ['src', 'bench', 'native']);
    const summary = all[0]!.map((r, i) => {
      const cpu = median(all.map((rs) => rs[i]!.cpu));
      const startup = r.startup === undefined ? undefined : median(all.map((rs) => rs[i]!.startup!));
      const steady = startup === undefined ? cpu : cpu - startup;
      return {
        role: r.role,
        bytes: r.bytes,
        cpuS: cpu,
        startupS: startup,
        cpuPerGib: perGib(cpu, r.bytes),
        steadyPerGib: perGib(steady, r.bytes),
        wallS: median(all.map((rs) => rs[i]!.wall)),
      };
    });
    const f = (x: number | undefined, d = 2) => (x === undefined || Number.isNaN(x) ? '' : x.toFixed(d));
    process.stdout.write(
      `dataplane: blob ${(blob.size / 2 ** 20).toFixed(1)} MiB over loopback` +
        `${rate ? ` paced at ${flags['link-mbit']} Mbit/s` : ''}, ${runs} run(s) (medians), ` +
        `commit ${commit}, load average ${loadavg()
          .map((x) => x.toFixed(2))
          .join(' ')}\n` +
        formatTable(
          ['process', 'MiB', 'CPU s', 'start-up s', 'CPU s/GiB', 'w/o start-up', '× target', 'wall s'],
          summary.map((s) => [
            s.role,
            (s.bytes / 2 ** 20).toFixed(1),
            f(s.cpuS),
            f(s.startupS),
            f(s.cpuPerGib, 1),
            f(s.steadyPerGib, 1),
            f(s.steadyPerGib / TARGET),
            f(s.wallS, 1),
          ]),
        ) +
        `\n(CPU: user + system of the process from /proc/PID/stat; nodes from spawn to their result line, ` +
        `servers over the phase; start-up: a node's CPU before the first MiB of blocks reached its cache; ` +
        `× target: CPU s/GiB without start-up / ${TARGET})\n`,
    );
    process.stdout.write(
      JSON.stringify({
        bench: 'dataplane',
        commit,
        blobBytes: blob.size,
        runs,
        linkMbit: Number(flags['link-mbit']),
        loadavg: loadavg(),
        targetCpuPerGib: TARGET,
        rows: summary,
      }) + '\n',
    );
    return 0;
  } finally {
    await Promise.all(procs.map((p) => p.stop().catch(() => undefined)));
    await Promise.all(proxies.map((p) => p.close()));
    await registry.stop();
    if (!flags.keep) await rm(work, { recursive: true, force: true });
    else log(`kept ${work}`);
  }
}

runMain(main, log);
