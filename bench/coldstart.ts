// bench/coldstart: pull + first run of a python image in containerd, over a
// registry in a network namespace shaped to --mbit, with dfnode's lazy pull
// (`dfnode pull` + `ctr run --snapshotter dfnode`) against containerd's own
// full pull into overlayfs (`ctr images pull` + `ctr run --snapshotter overlayfs`).
//
//   npm run build && node dist/bench/coldstart.js [--runs 3] [--mbit 100]
//
// Every sample starts from nothing: a fresh private containerd (root, content
// store, snapshots), a fresh `dfnode run` (cache, state, snapshotter root).
// Needs root, /dev/fuse, containerd, ctr, runc, docker-registry, skopeo,
// iproute2 (netns, veth, tc htb). Prints a table of medians and, last, one
// JSON line (see bench/README.md).
import { BuildSnapshot } from './lib/build-snapshot.js';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { spawn, spawnSync } from 'node:child_process';
import { PrivateContainerd } from './lib/containerd.js';
import { liveDaemons } from './lib/daemon.js';
import { DfnodeRun } from './lib/dfnode-run.js';
import { locateFixture } from './lib/fixture.js';
import { benchLog, gitState as gitStateOf, runMain, stopChildren } from './lib/main.js';
import { formatTable, median, run, versionOf } from './lib/measure.js';
import { unmountUnder, unmountUnderSync } from './lib/mounts-under.js';
import { Netns } from './lib/netns.js';
import { NetnsRegistry } from './lib/netns-registry.js';
import { describeDrop, dropPageCache, type DropMethod } from './lib/page-cache.js';

const HERE = dirname(fileURLToPath(import.meta.url));
/** dist/bench/coldstart.js → repository root. */
const REPO = resolve(HERE, '..', '..');
/** The CLIs run from a copy of dist/ (and of the native addon) taken at start: see bench/fuse-read.ts. */
const BUILD = new BuildSnapshot(REPO, 'coldstart');
const DFNODE = BUILD.dfnode;
const DFCONVERT = BUILD.dfconvert;

/** What runs in the container: a python start-up importing a few stdlib modules. */
const SCRIPT = 'import json, os, re, subprocess; print(1)';
const WORKLOAD = ['python3', '-c', SCRIPT];

const HELP = `usage: node dist/bench/coldstart.js [options]
  --fixture NAME      test fixture image with python3 (default debian-python)
  --runs N            repetitions of every variant (default 3); medians are reported
  --mbit N            link rate between host and registry, Mbit/s (default 100)
  --fill-rate BYTES   fetch.fillRate of the capped-fill variant, bytes/s (default: a quarter of the link)
  --variants LIST     of dfnode,dfnode-fill-capped,dfnode-no-fill,overlayfs (default: all)
  --work-dir DIR      scratch directory (default: a new one under ${tmpdir()}, removed afterwards)
  --keep              keep the scratch directory
`;

const log = benchLog('coldstart');

const gitState = (): string => gitStateOf(REPO, ['src', 'native']);

interface Sample {
  /** Wall seconds from the pull command's spawn to the workload's exit. */
  seconds: number;
  /** Bytes the registry side sent over the veth in that time (IP + TCP headers included). */
  bytes: number;
  pullSeconds: number;
  runSeconds: number;
  /** Not timed: containerd and dfnode run start-up before the sample. */
  setupSeconds: number;
  /** dfnode run's metrics right after the workload (dfnode variants): see DfnodeRun.metrics. */
  metrics?: Record<string, number>;
  /** dfnode pull: seconds after its spawn at which each progress line appeared. */
  pullLines?: Array<[number, string]>;
}

/** Runs a command to completion, noting when each stdout line appeared (seconds after spawn). */
function runLines(cmd: string, args: string[]): Promise<{ seconds: number; lines: Array<[number, string]> }> {
  return new Promise((resolvePromise, reject) => {
    const t0 = process.hrtime.bigint();
    const at = () => +(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(3);
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const lines: Array<[number, string]> = [];
    let partial = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      const parts = (partial + d).split('\n');
      partial = parts.pop()!;
      for (const l of parts) lines.push([at(), l]);
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-4000)));
    child.on('error', reject);
    child.on('close', (code, sig) => {
      if (partial) lines.push([at(), partial]);
      if (code !== 0)
        reject(new Error(`${cmd} ${args.join(' ')} failed (${sig ?? `exit ${code}`}):\n${err}`));
      else resolvePromise({ seconds: at(), lines });
    });
  });
}

interface Variant {
  name: string;
  kind: 'dfnode' | 'overlayfs';
  /** `dfnode run` config on top of the directories (dfnode variants). */
  config?: Record<string, Record<string, unknown>>;
  fill: string;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      fixture: { type: 'string', default: 'debian-python' },
      runs: { type: 'string', default: '3' },
      mbit: { type: 'string', default: '100' },
      'fill-rate': { type: 'string' },
      variants: { type: 'string', default: 'dfnode,dfnode-fill-capped,dfnode-no-fill,overlayfs' },
      'work-dir': { type: 'string' },
      keep: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const runs = Number(values.runs);
  const mbit = Number(values.mbit);
  const fillRate = values['fill-rate'] ? Number(values['fill-rate']) : Math.round((mbit * 1e6) / 8 / 4);
  for (const [k, v] of Object.entries({ runs, mbit, fillRate }))
    if (!Number.isFinite(v) || v < 1) throw new Error(`--${k} must be a positive number`);
  const fillLabel = `${(fillRate / 1e6).toFixed(1)} MB/s`;
  const all: Record<string, Variant> = {
    dfnode: { name: 'dfnode (default config)', kind: 'dfnode', fill: 'on, unlimited (default)' },
    'dfnode-fill-capped': {
      name: `dfnode, fill ≤ ${fillLabel}`,
      kind: 'dfnode',
      config: { fetch: { fillRate } },
      fill: `on, fetch.fillRate ${fillRate} B/s`,
    },
    'dfnode-no-fill': {
      name: 'dfnode, no fill',
      kind: 'dfnode',
      config: { fetch: { backgroundFill: false } },
      fill: 'off (fetch.backgroundFill false)',
    },
    overlayfs: { name: 'overlayfs (ctr pull)', kind: 'overlayfs', fill: '' },
  };
  const variants = values
    .variants!.split(',')
    .map((s) => s.trim())
    .map((k) => {
      const v = all[k];
      if (!v) throw new Error(`unknown variant ${k} (known: ${Object.keys(all).join(', ')})`);
      return v;
    });
  const baselineName = all.overlayfs!.name;
  if (process.getuid?.() !== 0) throw new Error('bench/coldstart needs root (containerd, FUSE, netns, tc)');
  if (!existsSync(join(REPO, 'dist', 'src', 'cli', 'dfnode.js')))
    throw new Error('dist/ is missing: run npm run build first');
  for (const tool of ['containerd', 'ctr', 'runc', 'docker-registry', 'skopeo', 'tc', 'ip'])
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
      throw new Error(`${tool} is not installed`);
  if (!existsSync('/dev/fuse')) throw new Error('/dev/fuse is missing');

  const commitAtStart = gitState();
  // Short: containerd's and dfnode's unix sockets live below it.
  const work = values['work-dir'] ? resolve(values['work-dir']) : await mkdtemp(join(tmpdir(), 'dfcs-'));
  await mkdir(work, { recursive: true });
  let ns: Netns | undefined;
  let registry: NetnsRegistry | undefined;
  let ctd: PrivateContainerd | undefined;
  let node: DfnodeRun | undefined;

  const cleanup = async () => {
    await ctd?.stop().catch(() => undefined);
    await node?.stop().catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    for (const d of liveDaemons()) await d.stop(5_000).catch(() => undefined);
    await unmountUnder(work);
    await ns?.destroy();
  };
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: cleaning up`);
    // Children started with run() (ctr, dfnode pull, skopeo, ...): stop them by PID.
    stopChildren((pid) => pid === ctd?.pid || liveDaemons().some((d) => d.pid === pid));
    void cleanup()
      .then(() => (values.keep ? undefined : rm(work, { recursive: true, force: true })))
      .finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('exit', () => {
    ctd?.killNow();
    for (const d of liveDaemons()) d.killNow();
    unmountUnderSync(work);
    ns?.destroySync();
    BUILD.removeSync();
  });

  const out = process.stdout;
  try {
    await BUILD.take();
    // ---- inputs (not timed): registry in a netns with the image and its conversion
    const fixtureDir = await locateFixture(REPO, values.fixture!, log);
    ns = await Netns.create();
    registry = await NetnsRegistry.start(ns, join(work, 'registry'));
    const source = `${registry.host}/bench/${values.fixture}:1`;
    const ref = `${source}-dfb`;
    log(`registry in netns ${ns.name} at ${registry.host}; pushing ${values.fixture} and converting it`);
    await run('skopeo', [
      'copy',
      '-q',
      '--dest-tls-verify=false',
      `oci:${fixtureDir}:latest`,
      `docker://${source}`,
    ]);
    await run(process.execPath, [
      DFCONVERT,
      '--plain-http',
      '--quiet',
      '--work-dir',
      join(work, 'convert'),
      source,
      ref,
    ]);
    const manifestOf = async (r: string) =>
      JSON.parse(
        (await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${r}`])).stdout,
      ) as { config: { size: number }; layers: Array<{ size: number }> };
    const srcManifest = await manifestOf(source);
    const dfbManifest = await manifestOf(ref);
    const gzipBytes = srcManifest.layers.reduce((a, l) => a + l.size, 0);
    const dfbBytes = dfbManifest.layers.reduce((a, l) => a + l.size, 0);

    await ns.shape(mbit);
    const shaping = await ns.describeShaping();
    log(`link shaped: ${shaping}`);

    const env = {
      node: process.version,
      cpus: `${availableParallelism()} × ${cpus()[0]?.model.trim() ?? '?'}`,
      kernel: versionOf('uname', ['-r']),
      containerd: versionOf('containerd', ['--version']),
      runc: versionOf('runc', ['--version']),
      loadavgStart: loadavg().map((x) => +x.toFixed(2)),
      /** HEAD when dist/ was copied (+dirty: src/ or native/ differed from it; dist/ is built from the working tree). */
      commit: commitAtStart,
      nativeAddon: BUILD.nativeAddon,
    };
    out.write(
      `\nbench/coldstart — fixture ${values.fixture}: ${srcManifest.layers.length} layers, ` +
        `${(gzipBytes / 1e6).toFixed(1)} MB gzip (the image size below), ${(dfbBytes / 1e6).toFixed(1)} MB DFB\n`,
    );
    out.write(
      `machine: ${env.cpus}, kernel ${env.kernel}, node ${env.node}, ${env.containerd}, load ` +
        `${env.loadavgStart.join(' ')}; code: dist/ copied at start (HEAD ${env.commit}); dfnode FUSE binding: ` +
        `auto (${env.nativeAddon ? 'native addon built' : 'fuse-native, addon not built'})\n`,
    );

    // ---- samples: every variant once per round, rounds interleaved
    const samples: Record<string, Sample[]> = {};
    const drops = new Set<DropMethod>();
    let n = 0;
    const sample = async (v: Variant): Promise<Sample> => {
      const dir = join(work, `s${++n}`);
      await rm(dir, { recursive: true, force: true });
      const s0 = process.hrtime.bigint();
      if (v.kind === 'dfnode')
        node = await DfnodeRun.start({
          cli: DFNODE,
          dir: join(dir, 'n'),
          config: v.config,
          metricsPort: 19_700 + (process.pid % 200),
        });
      ctd = await PrivateContainerd.start(join(dir, 'c'), {
        timeoutMs: 30_000,
        snapshotterSocket: node?.socket,
      });
      drops.add(await dropPageCache([]));
      const setupSeconds = Number(process.hrtime.bigint() - s0) / 1e9;
      const sock = ctd.address;
      const nsArgs = ['-a', sock, '-n', ctd.namespace];
      const id = `cs${n}`;
      try {
        const rx0 = ns!.hostRxBytes();
        const t0 = process.hrtime.bigint();
        const pull =
          v.kind === 'dfnode'
            ? await runLines(process.execPath, [
                DFNODE,
                'pull',
                '--plain-http',
                '--address',
                sock,
                '-n',
                ctd.namespace,
                ref,
              ])
            : await run('ctr', [
                ...nsArgs,
                'images',
                'pull',
                '--plain-http',
                '--snapshotter',
                'overlayfs',
                source,
              ]);
        const r = await run('ctr', [
          ...nsArgs,
          'run',
          '--rm',
          '--snapshotter',
          v.kind,
          '--env',
          'PYTHONDONTWRITEBYTECODE=1',
          v.kind === 'dfnode' ? ref : source,
          id,
          ...WORKLOAD,
        ]);
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        const bytes = ns!.hostRxBytes() - rx0;
        const metrics = await node?.metrics().catch(() => undefined);
        if (r.stdout.trim() !== '1')
          throw new Error(`${v.name}: workload printed ${JSON.stringify(r.stdout)}`);
        return {
          seconds,
          bytes,
          pullSeconds: pull.seconds,
          runSeconds: r.seconds,
          setupSeconds,
          ...(metrics ? { metrics } : {}),
          ...('lines' in pull ? { pullLines: pull.lines } : {}),
        };
      } finally {
        await ctd.stop();
        ctd = undefined;
        await node?.stop();
        node = undefined;
        await unmountUnder(dir);
        await rm(dir, { recursive: true, force: true });
      }
    };
    // Reference, not part of any sample: what starting the dfnode CLI costs on this machine right now.
    const cliStart: number[] = [];
    for (let r = 1; r <= runs; r++) {
      cliStart.push((await run(process.execPath, [DFNODE, '--version'])).seconds);
      for (const v of variants) {
        log(`run ${r}/${runs}: ${v.name}`);
        const s = await sample(v);
        log(
          `  ${s.seconds.toFixed(2)} s (pull ${s.pullSeconds.toFixed(2)}, run ${s.runSeconds.toFixed(2)}), ` +
            `${(s.bytes / 1e6).toFixed(1)} MB; set-up (not timed) ${s.setupSeconds.toFixed(2)} s`,
        );
        for (const [t, l] of s.pullLines ?? []) log(`    dfnode pull +${t.toFixed(2)} s: ${l}`);
        if (s.metrics)
          log(
            `    dfnode metrics after the run: reads blocked ${(s.metrics.dfnode_read_blocked_seconds_total ?? NaN).toFixed(2)} s, ` +
              `${s.metrics.dfnode_fetch_requests_total ?? NaN} range requests, ` +
              `${((s.metrics.dfnode_bytes_total ?? NaN) / 1e6).toFixed(1)} MB served by source`,
          );
        (samples[v.name] ??= []).push(s);
      }
    }

    // ---- medians, ratios
    const agg: Record<
      string,
      {
        seconds: number;
        bytes: number;
        pullSeconds: number;
        runSeconds: number;
        fill: string;
        all: number[];
        allBytes: number[];
        readBlockedSeconds?: number;
        rangeRequests?: number;
        pullTimeline?: Array<[number, string]>;
      }
    > = {};
    for (const v of variants) {
      const ss = samples[v.name]!;
      agg[v.name] = {
        seconds: +median(ss.map((s) => s.seconds)).toFixed(2),
        bytes: Math.round(median(ss.map((s) => s.bytes))),
        pullSeconds: +median(ss.map((s) => s.pullSeconds)).toFixed(2),
        runSeconds: +median(ss.map((s) => s.runSeconds)).toFixed(2),
        fill: v.fill,
        all: ss.map((s) => +s.seconds.toFixed(2)),
        allBytes: ss.map((s) => s.bytes),
        ...(ss[0]!.metrics
          ? {
              readBlockedSeconds: +median(
                ss.map((s) => s.metrics?.dfnode_read_blocked_seconds_total ?? NaN),
              ).toFixed(2),
              rangeRequests: median(ss.map((s) => s.metrics?.dfnode_fetch_requests_total ?? NaN)),
            }
          : {}),
        ...(ss[0]!.pullLines ? { pullTimeline: ss[0]!.pullLines } : {}),
      };
    }
    const base = agg[baselineName];
    const ratios: Record<string, { speedup?: number; bytesOfImage: number; bytesOfDfb: number }> = {};
    for (const v of variants)
      ratios[v.name] = {
        ...(base && v.kind === 'dfnode'
          ? { speedup: +(base.seconds / agg[v.name]!.seconds).toFixed(2) }
          : {}),
        bytesOfImage: +(agg[v.name]!.bytes / gzipBytes).toFixed(3),
        bytesOfDfb: +(agg[v.name]!.bytes / dfbBytes).toFixed(3),
      };
    const pageCache = [...drops].map(describeDrop).join('; ');
    out.write(
      `\nlink ${mbit} Mbit/s each way (tc htb, no added latency); workload: ctr run --rm ${WORKLOAD.join(' ')}; ` +
        `${runs} runs, medians\npage cache: ${pageCache}\n` +
        `reference: \`node dfnode.js --version\` takes ${median(cliStart).toFixed(2)} s here (CLI start-up, median)\n\n`,
    );
    out.write(
      formatTable(
        ['variant', 'sec', 'pull s', 'run s', 'MB from registry', 'of image', 'speed-up', 'runs (s)'],
        variants.map((v) => {
          const a = agg[v.name]!;
          const q = ratios[v.name]!;
          return [
            v.name,
            a.seconds.toFixed(2),
            a.pullSeconds.toFixed(2),
            a.runSeconds.toFixed(2),
            (a.bytes / 1e6).toFixed(1),
            `${(100 * q.bytesOfImage).toFixed(1)} %`,
            q.speedup !== undefined ? `${q.speedup.toFixed(2)}×` : '',
            a.all.map((x) => x.toFixed(2)).join(' '),
          ];
        }),
      ) + '\n\n',
    );
    out.write(
      '  sec = pull + first run: from spawning the pull command to the exit of `ctr run` (python finished; ' +
        'background fill may still be running)\n' +
        '  dfnode: `dfnode pull REF-dfb` into a private containerd whose proxy snapshotter is a fresh `dfnode run`, ' +
        'then `ctr run --snapshotter dfnode`\n' +
        '  overlayfs: `ctr images pull --plain-http --snapshotter overlayfs REF` (download + unpack), then ' +
        '`ctr run --snapshotter overlayfs`\n' +
        `  MB from registry = bytes the registry's namespace sent over the veth (IP+TCP included); of image = ÷ ` +
        `${(gzipBytes / 1e6).toFixed(1)} MB (gzip layers); speed-up = overlayfs sec ÷ dfnode sec\n`,
    );
    out.write(
      '\n' +
        JSON.stringify({
          bench: 'coldstart',
          fixture: values.fixture,
          layers: srcManifest.layers.length,
          gzipBytes,
          dfbBytes,
          mbit,
          runs,
          shaping,
          workload: WORKLOAD.join(' '),
          pageCache,
          cliStartSeconds: +median(cliStart).toFixed(2),
          results: agg,
          ratios,
          env: { ...env, loadavgEnd: loadavg().map((x) => +x.toFixed(2)) },
        }) +
        '\n',
    );
    return 0;
  } finally {
    await cleanup();
    await BUILD.remove();
    if (values.keep) log(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

runMain(main, log);
