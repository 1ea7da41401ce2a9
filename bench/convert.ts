// bench/convert: layer conversion throughput of dfconvert against
// mksquashfs -comp lz4 and ctr-remote's eStargz converter, on the same layers.
//
//   npm run build && node dist/bench/convert.js [--fixture debian-dev] [--runs 3]
//
// Prints a table of medians and, last, one JSON line (see bench/README.md).
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { convertAddonError } from '../src/blob/native-codec.js';
import { PrivateContainerd } from './lib/containerd.js';
import { formatProfiles, summariseDir } from './lib/cpu-profile.js';
import {
  locateFixture,
  prepareLayers,
  readImage,
  warm,
  writeTarLayout,
  type BenchImage,
} from './lib/fixture.js';
import { benchLog, gitState as gitStateOf, runMain } from './lib/main.js';
import { formatTable, median, processCpu, run, versionOf } from './lib/measure.js';

const HERE = dirname(fileURLToPath(import.meta.url));
/** dist/bench/convert.js → repository root. */
const REPO = resolve(HERE, '..', '..');
/** The package's `dfconvert` bin (package.json): the bundle users run, not the unbundled dist/src entry. */
const DFCONVERT = join(REPO, 'dist', 'bundle', 'dfconvert.js');
/** The unbundled entry: the --profile run uses it, so that functions are named by their source modules. */
const DFCONVERT_SRC = join(REPO, 'dist', 'src', 'cli', 'dfconvert.js');

const TOOLS = [
  'dfconvert',
  'dfconvert-tar',
  'dfconvert-zstd',
  'mksquashfs',
  'mksquashfs+tar',
  'estargz',
] as const;
type Tool = (typeof TOOLS)[number];

const DESCRIPTION: Record<Tool, string> = {
  dfconvert: 'dfconvert, gzip layers in (what CI runs)',
  'dfconvert-tar': 'dfconvert, uncompressed tar layers in (no gunzip)',
  'dfconvert-zstd':
    'dfconvert, zstd layers in (skopeo --dest-compress-format zstd, level 3; recompression not timed)',
  mksquashfs: 'mksquashfs -comp lz4 of the extracted tree (extraction not timed)',
  'mksquashfs+tar': 'tar -xzf of the gzip layer into a fresh dir, then mksquashfs (both timed)',
  estargz: 'ctr-remote images convert --estargz --oci (gzip in, gzip out)',
};

interface Sample {
  seconds: number;
  cpuSeconds: number;
  outputBytes: number;
}

const HELP = `usage: node dist/bench/convert.js [options]
  --fixture NAME     test fixture image: debian-dev (default: one ~477 MB layer with python3, perl, gcc),
                     debian, debian-python, busybox, multilayer
  --runs N           timed runs per tool (default 3); medians are reported
  --tools LIST       comma-separated subset of ${TOOLS.join(',')} (default: all)
  --workers N        dfconvert --workers and mksquashfs -processors (default: CPU count)
  --estargz-level N  eStargz gzip level (default: ctr-remote's own default, 9)
  --drop-caches      sync and drop the page cache before every timed run (needs root, not in a container)
  --profile          after timing, one more dfconvert run under node --cpu-prof; print top functions
  --work-dir DIR     scratch directory (default: a new one under ${tmpdir()}, removed afterwards)
  --keep             keep the scratch directory
`;

const log = benchLog('convert');

const gitState = (): string => gitStateOf(REPO, ['src', 'converter']);

async function dropCaches(): Promise<boolean> {
  await run('sync', []);
  try {
    await writeFile('/proc/sys/vm/drop_caches', '3\n');
    return true;
  } catch {
    return false;
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      fixture: { type: 'string', default: 'debian-dev' },
      runs: { type: 'string', default: '3' },
      tools: { type: 'string', default: TOOLS.join(',') },
      workers: { type: 'string', default: String(availableParallelism()) },
      'estargz-level': { type: 'string' },
      'drop-caches': { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
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
  const workers = Number(values.workers);
  if (!Number.isInteger(runs) || runs < 1)
    throw new Error(`--runs must be a positive integer, got ${values.runs}`);
  if (!Number.isInteger(workers) || workers < 1) throw new Error(`--workers must be a positive integer`);
  const tools = values.tools!.split(',').map((t) => t.trim()) as Tool[];
  for (const t of tools)
    if (!TOOLS.includes(t)) throw new Error(`unknown tool ${t}; known: ${TOOLS.join(', ')}`);
  if (!existsSync(DFCONVERT)) throw new Error(`${DFCONVERT} is missing: run npm run build first`);

  const commitAtStart = gitState();
  const work = values['work-dir']
    ? resolve(values['work-dir'])
    : await mkdtemp(join(tmpdir(), 'dfnode-bench-'));
  let containerd: PrivateContainerd | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    containerd?.killNow();
    process.exit(sig === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('exit', () => containerd?.killNow());

  try {
    // ---- inputs (not timed)
    const fixtureDir = await locateFixture(REPO, values.fixture!, log);
    const image: BenchImage = await readImage(values.fixture!, fixtureDir, 'latest');
    log(`fixture ${image.name}: ${image.layers.length} layer(s) in ${fixtureDir}; work dir ${work}`);
    await prepareLayers(image, join(work, 'input'));
    const gzipBytes = image.layers.reduce((n, l) => n + l.size, 0);
    const inputBytes = image.layers.reduce((n, l) => n + l.uncompressedSize!, 0);
    const tarLayout = join(work, 'input', 'oci-tar');
    if (tools.includes('dfconvert-tar')) await writeTarLayout(image, tarLayout, 'latest');
    const zstdLayout = join(work, 'input', 'oci-zstd');
    if (tools.includes('dfconvert-zstd'))
      await run('skopeo', [
        ...['copy', '-q', '--dest-compress-format', 'zstd'],
        ...[`oci:${fixtureDir}:latest`, `oci:${zstdLayout}:latest`],
      ]);

    if (tools.includes('estargz')) {
      containerd = await PrivateContainerd.start(join(work, 'containerd'));
      log(`containerd pid ${containerd.pid} on ${containerd.address}`);
      const archive = join(work, 'input', 'image.oci.tar');
      await run('skopeo', ['copy', '-q', `oci:${fixtureDir}:latest`, `oci-archive:${archive}:latest`]);
      await containerd.ctr(['images', 'import', '--no-unpack', '--base-name', 'bench/src', archive]);
      await rm(archive, { force: true });
    }
    await warm(image.layers.map((l) => l.blob));

    // ---- one timed run of each tool
    const once: Record<Tool, (dir: string) => Promise<Sample>> = {
      dfconvert: (dir) => runDfconvert(`oci:${fixtureDir}:latest`, dir, workers),
      'dfconvert-tar': (dir) => runDfconvert(`oci:${tarLayout}:latest`, dir, workers),
      'dfconvert-zstd': (dir) => runDfconvert(`oci:${zstdLayout}:latest`, dir, workers),
      mksquashfs: async (dir) => {
        const s: Sample = { seconds: 0, cpuSeconds: 0, outputBytes: 0 };
        await mkdir(dir, { recursive: true });
        for (const [i, l] of image.layers.entries()) {
          const out = join(dir, `layer-${i}.sqfs`);
          const r = await run('mksquashfs', [
            l.tree!,
            out,
            '-comp',
            'lz4',
            '-noappend',
            '-quiet',
            '-no-progress',
            '-processors',
            String(workers),
          ]);
          s.seconds += r.seconds;
          s.cpuSeconds += r.cpuSeconds;
          s.outputBytes += (await stat(out)).size;
        }
        return s;
      },
      'mksquashfs+tar': async (dir) => {
        const s: Sample = { seconds: 0, cpuSeconds: 0, outputBytes: 0 };
        for (const [i, l] of image.layers.entries()) {
          const tree = join(dir, `tree-${i}`);
          const out = join(dir, `layer-${i}.sqfs`);
          await mkdir(tree, { recursive: true });
          const own = process.getuid?.() === 0 ? ['--numeric-owner', '--same-owner'] : [];
          const x = await run('tar', ['-xzf', l.blob, '-C', tree, ...own, '--xattrs', '--xattrs-include=*']);
          const r = await run('mksquashfs', [
            tree,
            out,
            '-comp',
            'lz4',
            '-noappend',
            '-quiet',
            '-no-progress',
            '-processors',
            String(workers),
          ]);
          s.seconds += x.seconds + r.seconds;
          s.cpuSeconds += x.cpuSeconds + r.cpuSeconds;
          s.outputBytes += (await stat(out)).size;
        }
        return s;
      },
      estargz: async () => {
        const c = containerd!;
        const level = values['estargz-level'];
        const cpu0 = processCpu(c.pid!);
        // measure.run: it also counts the CPU of the reaped tool
        const r = await run('ctr-remote', [
          '-a',
          c.address,
          '-n',
          c.namespace,
          'images',
          'convert',
          '--estargz',
          '--oci',
          ...(level ? ['--estargz-compression-level', level] : []),
          'bench/src:latest',
          'bench/dst:esgz',
        ]);
        const daemonCpu = processCpu(c.pid!) - cpu0;
        const outputBytes = await estargzSize(c, 'bench/dst:esgz');
        // Fresh output each run: remove the image and collect its blobs.
        await c.ctr(['images', 'rm', '--sync', 'bench/dst:esgz']);
        return { seconds: r.seconds, cpuSeconds: r.cpuSeconds + daemonCpu, outputBytes };
      },
    };

    const samples = new Map<Tool, Sample[]>(tools.map((t) => [t, []]));
    let cacheNote = 'warm: inputs read before timing, page cache not dropped';
    for (let i = 1; i <= runs; i++) {
      for (const t of tools) {
        if (values['drop-caches']) {
          const ok = await dropCaches();
          cacheNote = ok
            ? 'cold: sync + drop_caches before every timed run'
            : 'warm: --drop-caches requested but /proc/sys/vm/drop_caches is not writable here';
        }
        const dir = join(work, 'out', `${t}-${i}`);
        const s = await once[t](dir);
        await rm(dir, { recursive: true, force: true });
        samples.get(t)!.push(s);
        log(
          `run ${i}/${runs} ${t}: ${s.seconds.toFixed(2)} s, ${(inputBytes / 1e6 / s.seconds).toFixed(1)} MB/s`,
        );
      }
    }

    // ---- report
    const result: Record<string, unknown> = {};
    const mbps = (t: Tool) => inputBytes / 1e6 / median(samples.get(t)!.map((s) => s.seconds));
    for (const t of tools) {
      const ss = samples.get(t)!;
      const sec = median(ss.map((s) => s.seconds));
      const out = median(ss.map((s) => s.outputBytes));
      result[t] = {
        seconds: ss.map((s) => +s.seconds.toFixed(3)),
        medianSeconds: +sec.toFixed(3),
        mbPerSec: +(inputBytes / 1e6 / sec).toFixed(1),
        cpuSeconds: +median(ss.map((s) => s.cpuSeconds)).toFixed(2),
        outputBytes: out,
        outputVsGzip: +(out / gzipBytes).toFixed(3),
      };
    }
    const ratios: Record<string, number> = {};
    for (const d of ['dfconvert', 'dfconvert-tar', 'dfconvert-zstd'] as const) {
      if (!tools.includes(d)) continue;
      for (const o of ['mksquashfs', 'mksquashfs+tar', 'estargz'] as const)
        if (tools.includes(o)) ratios[`${d}/${o}`] = +(mbps(d) / mbps(o)).toFixed(2);
    }

    const env = {
      node: process.version,
      cpus: `${availableParallelism()} × ${cpus()[0]?.model.trim() ?? '?'}`,
      loadavg: loadavg().map((x) => +x.toFixed(2)),
      mksquashfs: versionOf('mksquashfs', ['-version']),
      ctrRemote: versionOf('ctr-remote', ['--version']),
      containerd: versionOf('containerd', ['--version']),
      convertAddon: convertAddonError() ?? 'loaded',
      commit:
        commitAtStart === gitState()
          ? commitAtStart
          : `${commitAtStart} → ${gitState()} (changed during the run)`,
    };
    const rows = tools.map((t) => {
      const r = result[t] as {
        medianSeconds: number;
        mbPerSec: number;
        cpuSeconds: number;
        outputBytes: number;
        outputVsGzip: number;
      };
      const vs = t.startsWith('dfconvert')
        ? ''
        : tools.includes('dfconvert')
          ? `${(mbps('dfconvert') / r.mbPerSec).toFixed(2)}×`
          : '';
      return [
        t,
        r.medianSeconds.toFixed(2),
        r.mbPerSec.toFixed(1),
        r.cpuSeconds.toFixed(2),
        (r.outputBytes / 1e6).toFixed(1),
        r.outputVsGzip.toFixed(3),
        vs,
      ];
    });
    const out = process.stdout;
    out.write(
      `\nbench/convert — fixture ${image.name}: ${image.layers.length} layer(s), ` +
        `${(inputBytes / 1e6).toFixed(1)} MB uncompressed tar, ${(gzipBytes / 1e6).toFixed(1)} MB gzip\n`,
    );
    out.write(`runs: ${runs} per tool (medians); workers/processors: ${workers}; page cache: ${cacheNote}\n`);
    out.write(
      `machine: ${env.cpus}, node ${env.node}, load ${env.loadavg.join(' ')}; code ${env.commit}\n` +
        `dfconvert native addon: ${env.convertAddon}\n\n`,
    );
    out.write(
      formatTable(['tool', 'sec', 'MB/s', 'cpu s', 'out MB', 'out/gzip', 'dfconvert speed ×'], rows) + '\n\n',
    );
    for (const t of tools) out.write(`  ${t.padEnd(14)} ${DESCRIPTION[t]}\n`);
    out.write('  MB/s = uncompressed layer tar bytes / wall seconds; cpu s = user+sys of the tool');
    out.write(tools.includes('estargz') ? ' (estargz: ctr-remote + containerd)\n' : '\n');
    if (Object.keys(ratios).length) {
      out.write(
        `\nthroughput ratios: ${Object.entries(ratios)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')}\n`,
      );
    }

    let profile: unknown;
    if (values.profile)
      profile = await profileDfconvert(`oci:${fixtureDir}:latest`, join(work, 'prof'), workers);

    out.write(
      '\n' +
        JSON.stringify({
          bench: 'convert',
          fixture: image.name,
          layers: image.layers.length,
          inputBytes,
          gzipBytes,
          runs,
          workers,
          pageCache: cacheNote,
          tools: result,
          ratios,
          env,
          ...(profile ? { profile } : {}),
        }) +
        '\n',
    );
    return 0;
  } finally {
    await containerd?.stop();
    if (values.keep) log(`kept ${work}`);
    else await rm(work, { recursive: true, force: true });
  }
}

async function runDfconvert(
  src: string,
  dir: string,
  workers: number,
  nodeFlags: string[] = [],
  entry = DFCONVERT,
): Promise<Sample> {
  const r = await run(process.execPath, [
    ...nodeFlags,
    entry,
    '--force',
    '--quiet',
    '--json',
    '--workers',
    String(workers),
    '--work-dir',
    join(dir, 'work'),
    src,
    `oci:${join(dir, 'out')}:dfb`,
  ]);
  const summary = JSON.parse(r.stdout.trim().split('\n').pop()!) as { bytesOut: number; layers: unknown[] };
  return { seconds: r.seconds, cpuSeconds: r.cpuSeconds, outputBytes: summary.bytesOut };
}

async function estargzSize(c: PrivateContainerd, ref: string): Promise<number> {
  const list = await c.ctr(['images', 'ls']);
  const line = list.stdout.split('\n').find((l) => l.split(/\s+/)[0] === ref);
  const digest = line?.split(/\s+/)[2];
  if (!digest) throw new Error(`converted image ${ref} not found in containerd`);
  const manifest = JSON.parse((await c.ctr(['content', 'get', digest])).stdout) as {
    layers: Array<{ size: number }>;
  };
  return manifest.layers.reduce((n, l) => n + l.size, 0);
}

/** One dfconvert run under --cpu-prof (main thread and workers); top self-time functions. */
async function profileDfconvert(src: string, dir: string, workers: number): Promise<unknown> {
  const profDir = join(dir, 'cpuprofile');
  const s = await runDfconvert(src, dir, workers, ['--cpu-prof', `--cpu-prof-dir=${profDir}`], DFCONVERT_SRC);
  const summaries = await summariseDir(profDir);
  const out = process.stdout;
  out.write(
    `\nprofile: one dfconvert run under --cpu-prof took ${s.seconds.toFixed(2)} s (profiler overhead included)\n`,
  );
  out.write(formatProfiles(summaries));
  await rm(join(dir, 'out'), { recursive: true, force: true });
  await rm(join(dir, 'work'), { recursive: true, force: true });
  return summaries.map((p) => ({
    thread: p.file,
    durationMs: Math.round(p.durationMs),
    busyMs: Math.round(p.busyMs),
    top: p.top.slice(0, 8).map((f) => ({ name: f.name, where: f.where, selfMs: Math.round(f.selfMs) })),
  }));
}

runMain(main, log);
