// bench/fuse-read: reading a converted image through dfnode's FUSE layers.
//
//   1. cached: the image fully in dfnode's block cache; sequential read MB/s of
//      the large files and `find -xdev` + lstat of the whole tree, through
//      dfnode mount, squashfuse (mksquashfs -comp lz4 of the same tree) and the
//      plain unpacked directory — with the page cache dropped, and with only
//      the FUSE-level caches dropped (backing files warm).
//   2. cold: a registry in a network namespace shaped to --mbit; wall time and
//      bytes from `dfnode mount` to the end of a python start-up in the mounted
//      rootfs, against `skopeo copy` + `umoci unpack` + the same start-up.
//
//   npm run build && node dist/bench/fuse-read.js [--fixture debian-python] [--runs 3]
//
// Needs root, /dev/fuse, iproute2 (netns, veth, tc htb), docker-registry,
// skopeo, umoci, mksquashfs, squashfuse, chroot. Prints tables of medians and,
// last, one JSON line (see bench/README.md).
import { BuildSnapshot } from './lib/build-snapshot.js';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { lstat, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { spawnSync } from 'node:child_process';
import { formatProfiles, summariseDir } from './lib/cpu-profile.js';
import { liveDaemons } from './lib/daemon.js';
import { CHROOT, WORKLOAD, WORKLOAD_ENV, runColdStart } from './lib/cold-start.js';
import { DfnodeMount, type DfnodeMountOptions } from './lib/dfnode-mount.js';
import { locateFixture } from './lib/fixture.js';
import { benchLog, gitState as gitStateOf, runMain, stopChildren } from './lib/main.js';
import { run, versionOf } from './lib/measure.js';
import {
  largeFiles,
  reportCached,
  warmTree,
  type FindSample,
  type ReadSample,
} from './lib/fuse-read-cached.js';
import { unmountUnder, unmountUnderSync } from './lib/mounts-under.js';
import { Netns } from './lib/netns.js';
import { NetnsRegistry } from './lib/netns-registry.js';
import { dropPageCache, type DropMethod } from './lib/page-cache.js';
import { SquashfuseMount } from './lib/squashfuse-mount.js';

const HERE = dirname(fileURLToPath(import.meta.url));
/** dist/bench/fuse-read.js → repository root. */
const REPO = resolve(HERE, '..', '..');
/**
 * The CLIs are run from a copy of dist/ (and of the native addon) taken at start, under .tmp/ so that
 * node_modules still resolves: a rebuild of dist/ during the run (other work on the same checkout) must not
 * change the code measured halfway.
 */
const BUILD = new BuildSnapshot(REPO, 'fuse-read');
const DFNODE = BUILD.dfnode;
const DFCONVERT = BUILD.dfconvert;
const READER = join(HERE, 'lib', 'read-files.js');

const HELP = `usage: node dist/bench/fuse-read.js [options]
  --fixture NAME     test fixture image (default debian-python; the cold workload needs python3 in it)
  --runs N           cached-read runs (default 3); medians are reported
  --cold-runs N      cold-start runs (default 3)
  --parts LIST       cached,cold (default both)
  --mbit N           link rate for the cold part, Mbit/s (default 100)
  --min-size BYTES   "large file" threshold for the read test (default 1048576)
  --profile          after timing, one cold read and one cold find per dfnode binding under node --cpu-prof;
                     print the top self-time functions of dfnode's main thread
  --squashfuse BIN   squashfuse or squashfuse_ll (default squashfuse)
  --work-dir DIR     scratch directory (default: a new one under ${tmpdir()}, removed afterwards)
  --keep             keep the scratch directory
`;

const log = benchLog('fuse-read');

const gitState = (): string => gitStateOf(REPO, ['src']);

/** A filesystem under test: where it is, how to make it forget what it cached, its serving process. */
interface Target {
  name: string;
  root: () => string;
  /** Remount (FUSE) so that the kernel's page/entry caches and the server's own caches start empty. */
  reset: () => Promise<void>;
  /** Backing files to evict when drop_caches is refused, and to read for the warm-backing mode. */
  backing: string[];
  server?: () => { cpu(): number; threadCpu(): Map<string, number> } | undefined;
}

async function measureRead(t: Target, listFile: string): Promise<ReadSample> {
  const srv = t.server?.();
  const c0 = srv?.cpu() ?? Number.NaN;
  const m0 = srv?.threadCpu().get('main') ?? Number.NaN;
  const r = await run(process.execPath, [READER, listFile]);
  const c1 = srv?.cpu() ?? Number.NaN;
  const m1 = srv?.threadCpu().get('main') ?? Number.NaN;
  const out = JSON.parse(r.stdout) as { bytes: number; seconds: number };
  return {
    seconds: out.seconds,
    bytes: out.bytes,
    mbPerSec: out.bytes / 1e6 / out.seconds,
    serverCpu: c1 - c0,
    mainCpu: m1 - m0,
    readerCpu: r.cpuSeconds,
  };
}

async function measureFind(t: Target): Promise<FindSample> {
  const srv = t.server?.();
  const c0 = srv?.cpu() ?? Number.NaN;
  // -printf with inode, size, mode, owner and mtime: find must lstat every entry.
  const r = await run('find', [t.root(), '-xdev', '-printf', '%i %s %m %U %G %T@\n']);
  return {
    seconds: r.seconds,
    entries: r.stdout.split('\n').length - 1,
    serverCpu: (srv?.cpu() ?? Number.NaN) - c0,
  };
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      fixture: { type: 'string', default: 'debian-python' },
      runs: { type: 'string', default: '3' },
      'cold-runs': { type: 'string', default: '3' },
      parts: { type: 'string', default: 'cached,cold' },
      mbit: { type: 'string', default: '100' },
      'min-size': { type: 'string', default: String(1 << 20) },
      squashfuse: { type: 'string', default: 'squashfuse' },
      'work-dir': { type: 'string' },
      keep: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return 0;
  }
  const runs = Number(values.runs);
  const coldRuns = Number(values['cold-runs']);
  const mbit = Number(values.mbit);
  const minSize = Number(values['min-size']);
  const parts = new Set(values.parts!.split(',').map((s) => s.trim()));
  for (const [k, v] of Object.entries({ runs, coldRuns, mbit, minSize }))
    if (!Number.isFinite(v) || v < 1) throw new Error(`--${k} must be a positive number`);
  if (process.getuid?.() !== 0)
    throw new Error('bench/fuse-read needs root (FUSE, mount, netns, tc, chroot)');
  for (const f of [join(REPO, 'dist', 'src', 'cli', 'dfnode.js'), READER])
    if (!existsSync(f)) throw new Error(`${f} is missing: run npm run build first`);
  for (const tool of [
    'docker-registry',
    'skopeo',
    'umoci',
    'mksquashfs',
    values.squashfuse!,
    'tc',
    'ip',
    'chroot',
  ])
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0)
      throw new Error(`${tool} is not installed`);

  const commitAtStart = gitState();
  const work = values['work-dir']
    ? resolve(values['work-dir'])
    : await mkdtemp(join(tmpdir(), 'dfnode-fuse-read-'));
  await mkdir(work, { recursive: true });
  let ns: Netns | undefined;
  let registry: NetnsRegistry | undefined;
  const mounts = new Set<{ stop(): Promise<void> }>();

  const cleanup = async () => {
    for (const m of [...mounts]) await m.stop().catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    for (const d of liveDaemons()) await d.stop(5_000).catch(() => undefined);
    await unmountUnder(work);
    await ns?.destroy();
  };
  const onSignal = (sig: NodeJS.Signals) => {
    log(`${sig}: cleaning up`);
    // Children started with run() (umoci, skopeo, find, ...): stop them by PID.
    stopChildren((pid) => liveDaemons().some((d) => d.pid === pid));
    void cleanup().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('exit', () => {
    for (const d of liveDaemons()) d.killNow();
    unmountUnderSync(work);
    ns?.destroySync();
    BUILD.removeSync();
  });

  const out = process.stdout;
  try {
    await BUILD.take();
    // ---- inputs (not timed): the image, its unpacked rootfs, a registry in a netns with both images
    const fixtureDir = await locateFixture(REPO, values.fixture!, log);
    const src = join(work, 'src');
    await run('skopeo', ['copy', '-q', `oci:${fixtureDir}:latest`, `oci:${src}:latest`]);
    const rootfs = join(work, 'bundle', 'rootfs');
    log(`unpacking ${values.fixture} with umoci`);
    await run('umoci', ['unpack', '--image', `${src}:latest`, join(work, 'bundle')]);

    const hasPython = await lstat(join(rootfs, WORKLOAD[0]!)).then(
      () => true,
      () => false,
    );
    if (parts.has('cold') && !hasPython)
      throw new Error(
        `${values.fixture} has no ${WORKLOAD[0]}: use --parts cached, or a fixture with python3`,
      );

    ns = await Netns.create();
    registry = await NetnsRegistry.start(ns, join(work, 'registry'));
    const repo = `${registry.host}/bench/${values.fixture}`;
    log(`registry in netns ${ns.name} at ${registry.host}; pushing the image and converting it`);
    await run('skopeo', [
      'copy',
      '-q',
      '--dest-tls-verify=false',
      `oci:${src}:latest`,
      `docker://${repo}:latest`,
    ]);
    await run(process.execPath, [
      DFCONVERT,
      '--plain-http',
      '--quiet',
      '--json',
      '--work-dir',
      join(work, 'convert'),
      `oci:${src}:latest`,
      `${repo}:dfb`,
    ]);
    const srcManifest = JSON.parse(
      (await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${repo}:latest`])).stdout,
    ) as { layers: Array<{ size: number }> };
    const dfbManifest = JSON.parse(
      (await run('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${repo}:dfb`])).stdout,
    ) as { layers: Array<{ size: number }> };
    const gzipBytes = srcManifest.layers.reduce((a, l) => a + l.size, 0);
    const dfbBytes = dfbManifest.layers.reduce((a, l) => a + l.size, 0);
    const ref = `${repo}:dfb`;

    const env = {
      node: process.version,
      cpus: `${availableParallelism()} × ${cpus()[0]?.model.trim() ?? '?'}`,
      kernel: versionOf('uname', ['-r']),
      squashfuse: versionOf('dpkg-query', ['-W', '-f', '${Version}', 'squashfuse']),
      loadavgStart: loadavg().map((x) => +x.toFixed(2)),
      /** HEAD when dist/ was copied (+dirty: src/ differed from it; dist/ is built from the working tree). */
      commit: commitAtStart,
    };
    out.write(
      `\nbench/fuse-read — fixture ${values.fixture}: ${srcManifest.layers.length} layer(s), ` +
        `${(gzipBytes / 1e6).toFixed(1)} MB gzip, ${(dfbBytes / 1e6).toFixed(1)} MB DFB\n`,
    );
    out.write(
      `machine: ${env.cpus}, kernel ${env.kernel}, node ${env.node}, load ${env.loadavgStart.join(' ')}; ` +
        `code: dist/ copied at start (HEAD ${env.commit})\n`,
    );

    let cachedResult: Record<string, unknown> | undefined;
    let coldResult: Record<string, unknown> | undefined;

    // ================================================================ cached reads
    if (parts.has('cached')) {
      const sqfs = join(work, 'rootfs.sqfs');
      log('mksquashfs -comp lz4');
      await run('mksquashfs', [rootfs, sqfs, '-comp', 'lz4', '-noappend', '-quiet', '-no-progress']);
      const large = await largeFiles(rootfs, minSize);
      log(`${large.rel.length} files ≥ ${minSize} bytes, ${(large.bytes / 1e6).toFixed(1)} MB`);

      const dfOpts = (name: string, config?: Record<string, unknown>): DfnodeMountOptions => ({
        cli: DFNODE,
        ref,
        target: join(work, 'mnt', name),
        cacheDir: join(work, 'dfnode', 'cache'),
        stateDir: join(work, 'dfnode', `state-${name}`),
        config,
      });
      // Fill the cache once: a first read of every layer starts background fill.
      {
        const o = dfOpts('dfnode');
        const m = await DfnodeMount.start(o);
        mounts.add(m);
        const list = join(work, 'fill.list');
        await writeFile(list, large.rel.map((r) => join(o.target, r)).join('\n') + '\n');
        await run(process.execPath, [READER, list]);
        await run('find', [o.target, '-xdev', '-printf', '%s\n']);
        if (hasPython) await run(CHROOT, [o.target, ...WORKLOAD], { env: WORKLOAD_ENV });
        let last = 0;
        await m.waitFilled(15 * 60_000, (f, s) => {
          if (Date.now() - last > 5000) log(`background fill ${((100 * f) / Math.max(1, s)).toFixed(0)} %`);
          last = last || Date.now();
        });
        log(`background fill complete`);
        await m.stop();
        mounts.delete(m);
      }

      let current: Record<
        string,
        { stop(): Promise<void>; daemon: { cpu(): number; threadCpu(): Map<string, number> } }
      > = {};
      // One server at a time (dfnode variants share the cache dir, which allows one process), and none idle
      // in the background while another target is measured.
      const stopAll = async () => {
        for (const m of Object.values(current)) {
          await m.stop();
          mounts.delete(m);
        }
        current = {};
      };
      const restartDfnode = (name: string, config?: Record<string, unknown>) => async () => {
        await stopAll();
        const m = await DfnodeMount.start(dfOpts(name, config));
        mounts.add(m);
        current[name] = m;
      };
      const restartSquashfuse = async () => {
        await stopAll();
        const m = await SquashfuseMount.start(values.squashfuse!, sqfs, join(work, 'mnt', 'squashfuse'));
        mounts.add(m);
        current.squashfuse = m;
      };
      const dfCache = join(work, 'dfnode', 'cache');
      // dfnode rows: one per FUSE binding (config node.fuseBinding); the libfuse3 addon only when built.
      const bindings = ['fuse-native', ...(BUILD.nativeAddon ? ['native'] : [])];
      const dfTargets: Target[] = bindings.map((b) => ({
        name: `dfnode/${b}`,
        root: () => join(work, 'mnt', `dfnode-${b}`),
        reset: restartDfnode(`dfnode-${b}`, { node: { fuseBinding: b } }),
        backing: [dfCache],
        server: () => current[`dfnode-${b}`]?.daemon,
      }));
      const targets: Target[] = [
        ...dfTargets,
        {
          name: 'squashfuse',
          root: () => join(work, 'mnt', 'squashfuse'),
          reset: restartSquashfuse,
          backing: [sqfs],
          server: () => current.squashfuse?.daemon,
        },
        { name: 'plain', root: () => rootfs, reset: stopAll, backing: [rootfs] },
      ];
      const modes = ['cold', 'warm-backing'] as const;
      const reads: Record<string, ReadSample[]> = {};
      const finds: Record<string, FindSample[]> = {};
      const drops = new Set<DropMethod>();
      for (let r = 1; r <= runs; r++) {
        for (const mode of modes) {
          for (const t of targets) {
            const key = `${mode}/${t.name}`;
            log(`run ${r}/${runs}: ${key}`);
            const prepare = async () => {
              await t.reset();
              if (mode === 'cold') drops.add(await dropPageCache(t.backing));
              else await warmTree(t.backing);
            };
            await prepare();
            const list = join(work, `${t.name}.list`);
            await writeFile(list, large.rel.map((p) => join(t.root(), p)).join('\n') + '\n');
            (reads[key] ??= []).push(await measureRead(t, list));
            await prepare();
            (finds[key] ??= []).push(await measureFind(t));
          }
        }
      }
      await stopAll();

      // ---- optional: where dfnode's time goes, one profiled cold read and cold find per binding (not timed)
      let profile: Record<string, unknown> | undefined;
      let profileText = '';
      const profileOne = async (b: string, what: 'read' | 'find') => {
        const dir = join(work, 'prof', `${b}-${what}`);
        const root = join(work, 'mnt', `prof-${b}`);
        const m = await DfnodeMount.start({
          ...dfOpts(`prof-${b}`, { node: { fuseBinding: b } }),
          nodeFlags: ['--cpu-prof', `--cpu-prof-dir=${dir}`],
        });
        mounts.add(m);
        let secs: number;
        try {
          await dropPageCache([dfCache]);
          const list = join(work, 'prof.list');
          await writeFile(list, large.rel.map((p) => join(root, p)).join('\n') + '\n');
          const t0 = process.hrtime.bigint();
          if (what === 'read') await run(process.execPath, [READER, list]);
          else await run('find', [root, '-xdev', '-printf', '%i %s %m %U %G %T@\n']);
          secs = Number(process.hrtime.bigint() - t0) / 1e9;
        } finally {
          await m.stop();
          mounts.delete(m);
        }
        const summaries = await summariseDir(dir, 12);
        profileText +=
          `\nprofile: dfnode/${b}, cold ${what} (${secs.toFixed(2)} s under the profiler), ` +
          `whole dfnode process lifetime (start-up, mount, ${what}, unmount):\n`;
        profileText += formatProfiles(summaries, 12);
        profile![`${b}/${what}`] = summaries.map((p) => ({
          thread: p.file,
          durationMs: Math.round(p.durationMs),
          busyMs: Math.round(p.busyMs),
          top: p.top
            .slice(0, 10)
            .map((f) => ({ name: f.name, where: f.where, selfMs: Math.round(f.selfMs) })),
        }));
      };
      if (values.profile) {
        profile = {};
        for (const b of bindings)
          for (const what of ['read', 'find'] as const)
            await profileOne(b, what).catch((err: unknown) =>
              log(`profile of ${b}/${what} failed: ${err instanceof Error ? err.message : String(err)}`),
            );
      }

      const { agg, ratios, pageCache } = reportCached(out, {
        modes,
        targets: targets.map((t) => t.name),
        dfTargets: dfTargets.map((t) => t.name),
        reads,
        finds,
        drops,
        files: large.rel.length,
        bytes: large.bytes,
        minSize,
        runs,
      });
      out.write(profileText);
      cachedResult = {
        files: large.rel.length,
        bytes: large.bytes,
        minSize,
        runs,
        pageCache,
        squashfuseBinary: values.squashfuse,
        results: agg,
        ratios,
        ...(profile ? { profile } : {}),
      };
    }

    // ================================================================ cold start over a shaped link
    if (parts.has('cold'))
      coldResult = await runColdStart({
        ns,
        mbit,
        runs: coldRuns,
        work,
        dfnodeCli: DFNODE,
        ref,
        repo,
        rootfs,
        mounts,
        nativeAddon: BUILD.nativeAddon,
        log,
        out,
      });

    out.write(
      '\n' +
        JSON.stringify({
          bench: 'fuse-read',
          fixture: values.fixture,
          layers: srcManifest.layers.length,
          gzipBytes,
          dfbBytes,
          cached: cachedResult,
          cold: coldResult,
          env: {
            ...env,
            loadavgEnd: loadavg().map((x) => +x.toFixed(2)),
          },
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
