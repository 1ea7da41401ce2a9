/**
 * A private containerd 1.6 for tests (own root, state, socket and config; never the system one), `dfnode run`
 * as the snapshotter it talks to through `[proxy_plugins.dfnode]`, and small wrappers around `ctr`.
 *
 *   const node = await startDfnodeRun({ dir });                  // serves DIR/dfnode/snapshotter.sock
 *   const ctd = await startContainerd({ dir, snapshotterSocket: node.socket, cri: true, insecure: [reg.host] });
 *   await ctd.ctr(['run', '--rm', '--snapshotter', 'dfnode', ref, 'id', 'echo', 'hi']);
 *   await ctd.stop(); await node.stop();
 *
 * stop() kills the tasks this containerd runs (their shims outlive containerd otherwise), stops containerd
 * by its pid, kills leftover shims of this socket, and unmounts everything below its directory, even when a
 * test failed half way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { socketAccepts } from '../../bench/lib/dfnode-run.js';
import { pidsMentioning } from '../../src/process.js';
import { containerdConfig } from '../../src/containerd/private-containerd.js';
import { cliPath, run, runCli, type CliResult } from './cli.js';
import { mountsUnder, unmountAllUnder } from './node.js';
import { hasTool, requireConditions, type Requirement } from './require.js';
import { requireRegistry } from './registry.js';

/** Root, FUSE, overlayfs, containerd, ctr, runc and `tools`, as conditions for requireConditions. */
export function containerdConditions(tools: string[] = []): Record<string, boolean> {
  const conds: Record<string, boolean> = {
    'root (containerd, FUSE and overlay mounts)': process.getuid?.() === 0,
    '/dev/fuse': existsSync('/dev/fuse'),
    'overlay filesystem':
      existsSync('/proc/filesystems') && readFileSync('/proc/filesystems', 'utf8').includes('overlay'),
  };
  for (const t of ['containerd', 'ctr', 'runc', ...tools]) conds[`${t} in PATH`] = hasTool(t);
  return conds;
}

/** Root, FUSE, overlayfs, containerd, ctr, runc, registry, skopeo, umoci: what the containerd tests need. */
export function requireContainerd(extraTools: string[] = []): Requirement {
  const conds = containerdConditions(['skopeo', 'umoci', ...extraTools]);
  const reg = requireRegistry(['none']);
  if (reg.skip) conds[reg.reason] = false;
  return requireConditions(conds);
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live)
    if (c.pid && c.exitCode === null && c.signalCode === null) process.kill(c.pid, 'SIGKILL');
});

async function waitUntil(
  what: string,
  check: () => Promise<boolean>,
  timeoutMs: number,
  dead?: () => string | undefined,
) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    const why = dead?.();
    if (why) throw new Error(`${what}: ${why}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function exitedPromise(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((res) =>
    child.once('exit', (code, signal) => {
      live.delete(child);
      res({ code, signal });
    }),
  );
}

async function stopChild(child: ChildProcess, exited: Promise<unknown>, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

// ------------------------------------------------------------------ dfnode run

export interface DfnodeRunOptions {
  /** Work directory: cache, state, snapshotter root and socket go below it. */
  dir: string;
  args?: string[];
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** Serve the FUSE mounts from the long-lived fuse manager (default: in-process, they die with dfnode run). */
  fuseManager?: boolean;
  /** More `node` settings of the config file (e.g. metricsAddress, containerdAddress). */
  node?: Record<string, unknown>;
  /** Wraps the command line, e.g. NetnsHost.netArgv to run it in a host's network namespace. */
  launch?: Launcher;
}

/** Turns a command line into the one to spawn (the spawned PID must be the command's: the wrapper execs it). */
export type Launcher = (cmd: string, args: string[]) => [string, string[]];
const direct: Launcher = (cmd, args) => [cmd, args];

export interface DfnodeRun {
  pid: number;
  socket: string;
  /** Its control socket (control.sock in the state dir): `dfnode pull --control-socket`. */
  controlSocket: string;
  cacheDir: string;
  stateDir: string;
  snapshotterRoot: string;
  configPath: string;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, SIGKILL after graceMs. */
  stop(graceMs?: number): Promise<void>;
  kill(): Promise<void>;
}

/**
 * Spawns `dfnode run --plain-http` with its cache, state and snapshotter root below `dir` (config file, so
 * flag names do not matter) and resolves once the snapshotter socket accepts connections.
 */
export async function startDfnodeRun(opts: DfnodeRunOptions): Promise<DfnodeRun> {
  const cacheDir = join(opts.dir, 'cache');
  const stateDir = join(opts.dir, 'state');
  const snapshotterRoot = join(opts.dir, 'snapshotter');
  const socket = join(opts.dir, 'snapshotter.sock');
  const configPath = join(opts.dir, 'dfnode.json');
  await mkdir(opts.dir, { recursive: true });
  await writeFile(
    configPath,
    JSON.stringify({
      registry: { plainHttp: true },
      cache: { dir: cacheDir },
      node: { stateDir, metricsAddress: '', fuseManager: opts.fuseManager ?? false, ...opts.node },
      snapshotter: { enabled: true, root: snapshotterRoot, socket },
    }),
  );
  const [cmd, argv] = (opts.launch ?? direct)(process.execPath, [
    cliPath('dfnode'),
    'run',
    '-c',
    configPath,
    ...(opts.args ?? []),
  ]);
  const child = spawn(cmd, argv, {
    env: { ...process.env, DFNODE_LOG_LEVEL: 'info', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out = (out + d).slice(-50_000)));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-50_000)));
  const exited = exitedPromise(child);
  const h: DfnodeRun = {
    pid: child.pid!,
    socket,
    controlSocket: join(stateDir, 'control.sock'),
    cacheDir,
    stateDir,
    snapshotterRoot,
    configPath,
    stdout: () => out,
    stderr: () => err,
    exited,
    stop: (graceMs = 30_000) => stopChild(child, exited, graceMs),
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  try {
    await waitUntil(
      `dfnode run ready (snapshotter socket ${socket})`,
      // the socket accepts a moment before the ready line is written: wait for both, so that callers can
      // read what the start said (e.g. whether it started the fuse manager)
      async () => out.includes('dfnode running') && (await socketAccepts(socket)),
      opts.timeoutMs ?? 60_000,
      () =>
        child.exitCode !== null || child.signalCode !== null
          ? `dfnode run exited (${child.exitCode ?? child.signalCode}):\n${err}\n${out}`
          : undefined,
    );
  } catch (e) {
    await h.kill();
    throw e;
  }
  return h;
}

// ------------------------------------------------------------------ containerd

export interface StartContainerdOptions {
  /** Work directory (root, state, socket, config below it). Short paths: unix sockets have a 108-byte limit. */
  dir: string;
  /** dfnode's snapshotter socket: adds `[proxy_plugins.dfnode]`. */
  snapshotterSocket?: string;
  /** Enable the CRI plugin with snapshotter "dfnode" and snapshot annotations. */
  cri?: boolean;
  /** Registries (`host:port`) the CRI plugin reaches over plain HTTP. */
  insecure?: string[];
  timeoutMs?: number;
  /** Wraps the command line, e.g. NetnsHost.netArgv to run it in a host's network namespace. */
  launch?: Launcher;
}

export interface TestContainerd {
  pid: number;
  dir: string;
  /** The gRPC socket (also the CRI socket when cri is on). */
  socket: string;
  root: string;
  state: string;
  configPath: string;
  log(): string;
  /** `ctr --address SOCK [-n ns] ARGS`. */
  ctr(args: string[], opts?: { namespace?: string; timeoutMs?: number }): Promise<CliResult>;
  /** Like ctr, throws unless it exits 0; returns stdout. */
  ctrOk(args: string[], opts?: { namespace?: string; timeoutMs?: number }): Promise<string>;
  stop(): Promise<void>;
}

export async function startContainerd(opts: StartContainerdOptions): Promise<TestContainerd> {
  const dir = opts.dir;
  const root = join(dir, 'root');
  const state = join(dir, 'state');
  const socket = join(dir, 'containerd.sock');
  const configPath = join(dir, 'config.toml');
  await mkdir(join(dir, 'cni', 'bin'), { recursive: true });
  await mkdir(join(dir, 'cni', 'conf'), { recursive: true });
  await writeFile(
    configPath,
    containerdConfig({
      dir,
      socket,
      debugAddress: '',
      snapshotterSocket: opts.snapshotterSocket,
      cri: opts.cri ? { insecure: opts.insecure ?? [] } : undefined,
    }),
  );
  const [cmd, argv] = (opts.launch ?? direct)('containerd', ['--config', configPath, '--log-level', 'info']);
  const child = spawn(cmd, argv, {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let log = '';
  const onLog = (d: string) => (log = (log + d).slice(-200_000));
  child.stdout!.setEncoding('utf8').on('data', onLog);
  child.stderr!.setEncoding('utf8').on('data', onLog);
  const exited = exitedPromise(child);

  const ctr = (args: string[], o: { namespace?: string; timeoutMs?: number } = {}) =>
    run('ctr', ['--address', socket, ...(o.namespace ? ['-n', o.namespace] : []), ...args], {
      timeoutMs: o.timeoutMs ?? 180_000,
    });
  const ctrOk = async (args: string[], o: { namespace?: string; timeoutMs?: number } = {}) => {
    const r = await ctr(args, o);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
    return r.stdout;
  };

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    // Tasks first: their shims would outlive containerd and keep rootfs mounts busy.
    if (child.exitCode === null && child.signalCode === null) {
      const nss = (await ctr(['namespaces', 'ls', '-q'], { timeoutMs: 15_000 })).stdout
        .split('\n')
        .filter(Boolean);
      for (const ns of nss) {
        const tasks = (await ctr(['tasks', 'ls', '-q'], { namespace: ns, timeoutMs: 15_000 })).stdout
          .split('\n')
          .filter(Boolean);
        for (const t of tasks) {
          await ctr(['tasks', 'kill', '-s', 'SIGKILL', t], { namespace: ns, timeoutMs: 15_000 });
          await ctr(['tasks', 'rm', '-f', t], { namespace: ns, timeoutMs: 15_000 });
        }
        const ctrs = (await ctr(['containers', 'ls', '-q'], { namespace: ns, timeoutMs: 15_000 })).stdout
          .split('\n')
          .filter(Boolean);
        for (const c of ctrs) await ctr(['containers', 'rm', c], { namespace: ns, timeoutMs: 15_000 });
      }
    }
    await stopChild(child, exited, 15_000);
    for (const pid of pidsMentioning(socket)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
    await unmountAllUnder(dir);
  };

  try {
    await waitUntil(
      `containerd on ${socket}`,
      async () =>
        (await stat(socket).catch(() => undefined)) !== undefined &&
        (await ctr(['version'], { timeoutMs: 10_000 })).code === 0,
      opts.timeoutMs ?? 60_000,
      () =>
        child.exitCode !== null || child.signalCode !== null
          ? `containerd exited:\n${log.slice(-4000)}`
          : undefined,
    );
  } catch (e) {
    await stop();
    throw e;
  }
  return { pid: child.pid!, dir, socket, root, state, configPath, log: () => log, ctr, ctrOk, stop };
}

/** Mounts below `dir` whose source or type is a dfnode FUSE layer. */
export async function dfnodeMountsUnder(dir: string): Promise<string[]> {
  return (await mountsUnder(dir))
    .filter((m) => m.fstype.startsWith('fuse') || m.source.startsWith('dfnode'))
    .map((m) => m.mountpoint);
}

/** Removes a work dir after unmounting everything below it. */
export async function removeWorkDir(dir: string): Promise<void> {
  await unmountAllUnder(dir);
  await rm(dir, { recursive: true, force: true }).catch(() => undefined);
}

// ------------------------------------------------------------------ images for the containerd tests

/**
 * Pushes an OCI layout tag to the registry as `HOST/NAME:1` with skopeo and converts it with dfconvert
 * (→ `HOST/NAME:1-dfb`). Returns both references.
 */
export async function pushAndConvertLayout(
  registryHost: string,
  layout: { dir: string; tag: string },
  name: string,
  workDir: string,
): Promise<{ source: string; dfb: string }> {
  const source = `${registryHost}/${name}:1`;
  const p = await run('skopeo', [
    'copy',
    '--quiet',
    '--dest-tls-verify=false',
    `oci:${layout.dir}:${layout.tag}`,
    `docker://${source}`,
  ]);
  if (p.code !== 0) throw new Error(`skopeo copy ${name} failed: ${p.stderr}`);
  const c = await runCli('dfconvert', [
    '--plain-http',
    '--quiet',
    '--work-dir',
    join(workDir, 'dfwork'),
    source,
  ]);
  if (c.code !== 0) throw new Error(`dfconvert ${source} failed (${c.code}): ${c.stderr}`);
  return { source, dfb: `${source}-dfb` };
}

async function sh(script: string): Promise<void> {
  const r = await run('bash', ['-euo', 'pipefail', '-c', script], { timeoutMs: 300_000 });
  if (r.code !== 0) throw new Error(`build step failed (${r.code}): ${r.stderr}\n${script}`);
}

/**
 * busybox plus two layers that exercise overlay semantics inside a running container:
 *   layer 2 (umoci): /data/keep.txt, /data/gone.txt, /data/opq/{old.txt,sub/deep.txt}, /data/lower-only/a
 *   layer 3 (hand-made tar): whiteout of /data/gone.txt, opaque /data/opq with /data/opq/new.txt
 * Built from the busybox fixture layout into `outDir` (tag latest).
 */
export async function buildLayeredBusybox(
  busyboxLayout: string,
  outDir: string,
): Promise<{ dir: string; tag: string }> {
  const work = `${outDir}.work`;
  await rm(outDir, { recursive: true, force: true });
  await rm(work, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  await sh(`
    cp -a ${q(busyboxLayout)} ${q(outDir)}
    rm -f ${q(outDir)}/.stamp
    umoci unpack --image ${q(outDir)}:latest ${q(work)}/bundle
    R=${q(work)}/bundle/rootfs
    mkdir -p "$R/data/opq/sub" "$R/data/lower-only"
    echo keep >"$R/data/keep.txt"
    echo gone >"$R/data/gone.txt"
    echo old >"$R/data/opq/old.txt"
    echo deep >"$R/data/opq/sub/deep.txt"
    echo a >"$R/data/lower-only/a"
    umoci repack --image ${q(outDir)}:latest ${q(work)}/bundle
    S=${q(work)}/l3
    mkdir -p "$S/data/opq"
    : >"$S/data/opq/.wh..wh..opq"
    echo new >"$S/data/opq/new.txt"
    : >"$S/data/.wh.gone.txt"
    tar -C "$S" --numeric-owner --owner=0 --group=0 --format=pax -cf ${q(work)}/l3.tar data/opq data/.wh.gone.txt
    umoci raw add-layer --image ${q(outDir)}:latest ${q(work)}/l3.tar
    umoci config --image ${q(outDir)}:latest --config.cmd /bin/sh
    umoci gc --layout ${q(outDir)}
  `);
  await rm(work, { recursive: true, force: true });
  return { dir: outDir, tag: 'latest' };
}

// ------------------------------------------------------------------ CRI client

export { criClient, type CriImageService } from '../../bench/lib/cri-client.js';
