// bench/coldstart: pull + first run of container images in containerd, over a
// registry in a network namespace shaped to --mbit, with dfnode's lazy pull
// (`dfnode pull` + `ctr run --snapshotter dfnode`; also with a recorded
// prefetch list, without the daemon's control socket, and through containerd's
// CRI plugin) against containerd's own full pull into overlayfs
// (`ctr images pull` + `ctr run --snapshotter overlayfs`). Images: python
// (debian-python), debian (`ls /usr/bin`) and node (debian-node).
//
//   npm run build && node dist/bench/coldstart.js [--runs 5] [--mbit 100] [--fixtures debian,debian-node]
//
// Every sample starts from nothing: a fresh private containerd (root, content
// store, snapshots), a fresh `dfnode run` (cache, state, snapshotter root).
// Needs root, /dev/fuse, containerd, ctr, runc, docker-registry, skopeo,
// iproute2 (netns, veth, tc htb). Prints a table of medians per image and,
// after each, one JSON line (see bench/README.md).
import { BuildSnapshot } from './lib/build-snapshot.js';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { spawn, spawnSync } from 'node:child_process';
import { PrivateContainerd } from './lib/containerd.js';
import {
  DEFAULT_VARIANTS,
  hasOptimize,
  optimizeArgs,
  variantsFor,
  WORKLOADS,
  type Variant,
} from './lib/coldstart-variants.js';
import { criClient } from './lib/cri-client.js';
import { liveDaemons } from './lib/daemon.js';
import { DfnodeRun } from './lib/dfnode-run.js';
import { locateFixture } from './lib/fixture.js';
import { benchLog, gitState as gitStateOf, runMain, stopChildren } from './lib/main.js';
import { median, run, versionOf } from './lib/measure.js';
import { report, type Image, type Sample } from './lib/coldstart-report.js';
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

const HELP = `usage: node dist/bench/coldstart.js [options]
  --fixtures LIST     images, of ${Object.keys(WORKLOADS).join(', ')} (default: all)
  --runs N            repetitions of every variant (default 5); medians are reported
  --mbit N            link rate between host and registry, Mbit/s (default 100)
  --fill-rate BYTES   fetch.fillRate of the capped-fill variant, bytes/s (default: a quarter of the link)
  --variants LIST     of ${Object.keys(variantsFor(1)).join(',')} (default: ${DEFAULT_VARIANTS})
  --work-dir DIR      scratch directory (default: a new one under ${tmpdir()}, removed afterwards)
  --keep              keep the scratch directory
`;

const log = benchLog('coldstart');

const gitState = (): string => gitStateOf(REPO, ['src', 'native']);

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
      else if (err.trim()) reject(new Error(`${cmd} ${args.join(' ')} wrote to stderr:\n${err}`));
      else resolvePromise({ seconds: at(), lines });
    });
  });
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      fixtures: { type: 'string', default: Object.keys(WORKLOADS).join(',') },
      fixture: { type: 'string' },
      runs: { type: 'string', default: '5' },
      mbit: { type: 'string', default: '100' },
      'fill-rate': { type: 'string' },
      variants: { type: 'string', default: DEFAULT_VARIANTS },
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
  const fixtures = (values.fixture ?? values.fixtures!).split(',').map((s) => s.trim());
  for (const f of fixtures)
    if (!WORKLOADS[f]) throw new Error(`unknown fixture ${f} (known: ${Object.keys(WORKLOADS).join(', ')})`);
  const all = variantsFor(fillRate);
  const variants = values
    .variants!.split(',')
    .map((s) => s.trim())
    .map((k) => {
      const v = all[k];
      if (!v) throw new Error(`unknown variant ${k} (known: ${Object.keys(all).join(', ')})`);
      return v;
    });
  if (process.getuid?.() !== 0) throw new Error('bench/coldstart needs root (containerd, FUSE, netns, tc)');
  if (!existsSync(join(REPO, 'dist', 'bundle', 'dfnode.js')))
    throw new Error('dist/bundle is missing: run npm run build first');
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
    // ---- inputs (not timed): registry in a netns with the images and their conversions
    ns = await Netns.create();
    registry = await NetnsRegistry.start(ns, join(work, 'registry'));
    const optimize = variants.some((v) => v.optimized) ? hasOptimize(DFCONVERT) : false;
    const images: Image[] = [];
    for (const fixture of fixtures) images.push(await prepareImage(fixture, registry.host, work, optimize));

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
      `\nbench/coldstart — machine: ${env.cpus}, kernel ${env.kernel}, node ${env.node}, ${env.containerd}, load ` +
        `${env.loadavgStart.join(' ')}; code: dist/ copied at start (HEAD ${env.commit}); dfnode FUSE binding: ` +
        `auto (${env.nativeAddon ? 'native addon built' : 'fuse-native, addon not built'})\n`,
    );

    let n = 0;
    const drops = new Set<DropMethod>();
    const sample = async (v: Variant, img: Image): Promise<Sample> => {
      const dir = join(work, `s${++n}`);
      await rm(dir, { recursive: true, force: true });
      const s0 = process.hrtime.bigint();
      if (v.kind === 'dfnode')
        node = await DfnodeRun.start({
          cli: DFNODE,
          dir: join(dir, 'n'),
          // containerd's socket (the one started below): per-container metrics look containers up there
          config: {
            ...v.config,
            node: { ...v.config?.node, containerdAddress: join(dir, 'c', 'containerd.sock') },
          },
          metricsPort: 19_700 + (process.pid % 200),
        });
      ctd = await PrivateContainerd.start(join(dir, 'c'), {
        timeoutMs: 30_000,
        snapshotterSocket: node?.socket,
        ...(v.pull === 'cri' ? { cri: { insecure: [registry!.host] } } : {}),
      });
      const cri = v.pull === 'cri' ? await criClient(ctd.address) : undefined;
      drops.add(await dropPageCache([]));
      const setupSeconds = Number(process.hrtime.bigint() - s0) / 1e9;
      const sock = ctd.address;
      // CRI keeps its images in containerd's k8s.io namespace
      const namespace = v.pull === 'cri' ? 'k8s.io' : ctd.namespace;
      const ref =
        v.kind === 'overlayfs' ? img.source : v.optimized ? (img.optimized as { ref: string }).ref : img.ref;
      const id = `cs${n}`;
      try {
        const rx0 = ns!.hostRxBytes();
        const t0 = process.hrtime.bigint();
        const pullArgs = ['pull', '--address', sock, '-n', namespace, ref];
        let pull: { seconds: number; lines?: Array<[number, string]> };
        if (v.pull === 'ctr')
          pull = await run('ctr', [
            '-a',
            sock,
            '-n',
            namespace,
            'images',
            'pull',
            '--plain-http',
            '--snapshotter',
            'overlayfs',
            ref,
          ]);
        else if (v.pull === 'daemon')
          // the package's `dfnode` command (bin/dfnode): its native client hands the pull to dfnode run
          pull = await runLines(BUILD.dfnodeBin, [...pullArgs, '--control-socket', node!.controlSocket]);
        else if (v.pull === 'direct')
          pull = await runLines(process.execPath, [DFNODE, ...pullArgs, '--direct', '--plain-http']);
        else {
          await cri!.pullImage(ref);
          pull = { seconds: Number(process.hrtime.bigint() - t0) / 1e9 };
        }
        const envArgs = (img.workload.env ?? []).flatMap((e) => ['--env', e]);
        const r = await run('ctr', [
          ...['-a', sock, '-n', namespace],
          ...['run', '--rm', '--snapshotter', v.kind, ...envArgs, ref, id],
          ...img.workload.cmd,
        ]);
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        const bytes = ns!.hostRxBytes() - rx0;
        const metrics = await node?.metrics().catch(() => undefined);
        if (!img.workload.ok(r.stdout))
          throw new Error(`${v.name}: workload printed ${JSON.stringify(r.stdout.slice(0, 500))}`);
        return {
          seconds,
          bytes,
          pullSeconds: pull.seconds,
          runSeconds: r.seconds,
          setupSeconds,
          ...(metrics ? { metrics } : {}),
          ...(pull.lines ? { pullLines: pull.lines } : {}),
        };
      } finally {
        cri?.close();
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
    for (const img of images) {
      const samples: Record<string, Sample[]> = {};
      const skipped = (v: Variant) =>
        v.optimized && 'skipped' in img.optimized ? img.optimized.skipped : undefined;
      for (let r = 1; r <= runs; r++) {
        cliStart.push((await run(process.execPath, [DFNODE, '--version'])).seconds);
        for (const v of variants) {
          if (skipped(v)) continue;
          log(`${img.fixture} run ${r}/${runs}: ${v.name}`);
          const s = await sample(v, img);
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
          (samples[v.key] ??= []).push(s);
        }
      }
      report(img, variants, samples, skipped, {
        runs,
        mbit,
        shaping,
        pageCache: [...drops].map(describeDrop).join('; '),
        cliStartSeconds: +median(cliStart).toFixed(2),
        env: { ...env, loadavgEnd: loadavg().map((x) => +x.toFixed(2)) },
      });
    }
    return 0;
  } finally {
    await cleanup();
    await BUILD.remove();
    if (values.keep) log(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

/** Pushes a fixture as REPO:1, converts it to :1-dfb and, when dfconvert can, with --optimize to :1-opt. */
async function prepareImage(fixture: string, host: string, work: string, optimize: boolean): Promise<Image> {
  const fixtureDir = await locateFixture(REPO, fixture, log);
  const source = `${host}/bench/${fixture}:1`;
  const ref = `${source}-dfb`;
  const workload = WORKLOADS[fixture]!;
  log(`pushing ${fixture} and converting it`);
  await run('skopeo', [
    'copy',
    '-q',
    '--dest-tls-verify=false',
    `oci:${fixtureDir}:latest`,
    `docker://${source}`,
  ]);
  const convertWork = join(work, `convert-${fixture}`);
  await run(process.execPath, [DFCONVERT, '--plain-http', '--quiet', '--work-dir', convertWork, source, ref]);
  let optimized: Image['optimized'] = { skipped: 'skipped: dfconvert has no --optimize' };
  if (optimize) {
    const opt = `${source}-opt`;
    log(
      `converting ${fixture} with a recorded prefetch list (dfconvert --optimize -- ${workload.cmd.join(' ')})`,
    );
    await run(process.execPath, [DFCONVERT, ...optimizeArgs(source, opt, `${convertWork}-opt`, workload)]);
    optimized = { ref: opt };
  }
  const manifestOf = async (r: string) =>
    JSON.parse((await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${r}`])).stdout) as {
      layers: Array<{ size: number }>;
    };
  const src = await manifestOf(source);
  const dfb = await manifestOf(ref);
  return {
    fixture,
    workload,
    source,
    ref,
    optimized,
    layers: src.layers.length,
    gzipBytes: src.layers.reduce((a, l) => a + l.size, 0),
    dfbBytes: dfb.layers.reduce((a, l) => a + l.size, 0),
  };
}

runMain(main, log);
