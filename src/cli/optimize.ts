// `dfconvert --optimize`: run a workload against the converted image under dfnode in a throw-away
// environment and record what it reads (the prefetch list the second conversion lays out first).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parsePrefetchList, type PrefetchEntry } from '../blob/prefetch-list.js';
import { PrivateContainerd } from '../containerd/private-containerd.js';
import { EmbeddedRegistry } from '../demo/embedded-registry.js';
import { DfError } from '../errors.js';
import { unmountUnder } from '../fuse/mounts.js';
import { socketAccepts } from '../util/unix-socket.js';

export interface RecordWorkloadOptions {
  /** The workload: a command and its arguments, run in the image's root filesystem. */
  cmd: string[];
  /** The workload is stopped after this long (s). */
  seconds: number;
  /** Converts the source image to `dst` (a registry reference on the embedded, plain-HTTP registry). */
  convert: (dst: string, plainHttpHost: string) => Promise<void>;
  /** Progress lines (stderr). */
  note: (line: string) => void;
  signal: AbortSignal;
}

const hasTool = (t: string) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0;

/** What --optimize needs on this machine, or a clear error naming what is missing. */
export function checkOptimizeRequirements(): void {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root (FUSE mounts and containerd)');
  if (!existsSync('/dev/fuse')) missing.push('/dev/fuse');
  for (const t of ['containerd', 'ctr', 'runc', 'docker-registry'])
    if (!hasTool(t)) missing.push(`${t} in PATH`);
  if (missing.length)
    throw new DfError(
      'FAILED_PRECONDITION',
      `dfconvert --optimize runs the workload in a private containerd under dfnode and needs: ${missing.join(', ')}` +
        ' (apt-get install containerd runc docker-registry; run as root); or record elsewhere and use --prefetch-list',
    );
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** The child's exit code; rejects as soon as `signal` aborts (the caller's finally stops the child). */
function exitedOrAborted(child: ChildProcess, signal: AbortSignal): Promise<number | null> {
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(DfError.aborted('interrupted'));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    void exited(child).then((code) => {
      signal.removeEventListener('abort', onAbort);
      resolve(code);
    });
  });
}

/** SIGTERM by PID, SIGKILL after graceMs. */
async function stopChild(child: ChildProcess | undefined, graceMs: number): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const done = exited(child);
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await done;
  clearTimeout(t);
}

/**
 * Converts the source image into an embedded registry, serves it with `dfnode run --record-reads` (own cache,
 * state and snapshotter socket) to a private containerd, pulls it with `dfnode pull`, runs `cmd` with
 * `ctr run --snapshotter dfnode` until it exits or `seconds` pass, stops everything (by PID; unmounts and
 * removes the temporary directory, also on error and Ctrl-C) and returns the recorded prefetch list.
 */
export async function recordWorkload(o: RecordWorkloadOptions): Promise<PrefetchEntry[]> {
  checkOptimizeRequirements();
  const work = await mkdtemp(join(tmpdir(), 'dfopt-'));
  let registry: EmbeddedRegistry | undefined;
  let node: ChildProcess | undefined;
  let ctd: PrivateContainerd | undefined;
  let task: ChildProcess | undefined;
  let pull: ChildProcess | undefined;
  const id = `dfopt-${process.pid}`;
  try {
    registry = await EmbeddedRegistry.start(work);
    const ref = `${registry.host}/dfconvert/optimize:dfb`;
    o.note(`optimize: converting into a private registry (${registry.host})`);
    await o.convert(ref, registry.host);
    o.signal.throwIfAborted();

    const socket = join(work, 'sn.sock');
    const listFile = join(work, 'reads.jsonl');
    const config = join(work, 'dfnode.json');
    await writeFile(
      config,
      JSON.stringify({
        registry: { insecure: [registry.host] },
        cache: { dir: join(work, 'cache') },
        fetch: { backgroundFill: false },
        node: { stateDir: join(work, 'state'), metricsAddress: '', fuseManager: false },
        snapshotter: { enabled: true, root: join(work, 'snap'), socket },
      }),
    );
    const dfnode = fileURLToPath(new URL('./dfnode.js', import.meta.url));
    node = spawn(process.execPath, [dfnode, 'run', '-c', config, '--record-reads', listFile], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, DFNODE_LOG_LEVEL: 'warn' },
    });
    let nodeErr = '';
    node.stderr!.setEncoding('utf8').on('data', (d: string) => (nodeErr = (nodeErr + d).slice(-4000)));
    const deadline = Date.now() + 60_000;
    while (!(await socketAccepts(socket))) {
      if (node.exitCode !== null || node.signalCode !== null)
        throw new DfError('INTERNAL', `dfnode run exited during start: ${nodeErr.trim()}`);
      if (Date.now() > deadline) throw DfError.timeout(`dfnode run did not serve ${socket} within 60 s`);
      o.signal.throwIfAborted();
      await new Promise((r) => setTimeout(r, 100));
    }
    o.note(`optimize: dfnode run --record-reads (pid ${node.pid}) serving the snapshotter`);
    // containerd and ctr mount snapshots in TMPDIR for a moment (user lookup): below `work`, so that a
    // mount left by an interrupted ctr is unmounted with the rest
    const tmp = join(work, 'tmp');
    await mkdir(tmp);
    const toolEnv = { ...process.env, TMPDIR: tmp };
    ctd = await PrivateContainerd.start(join(work, 'c'), {
      snapshotterSocket: socket,
      namespace: 'dfconvert',
      tmpDir: tmp,
    });
    o.note(`optimize: private containerd (pid ${ctd.pid}); dfnode pull ${ref}`);
    pull = spawn(
      process.execPath,
      [dfnode, 'pull', '-c', config, '--address', ctd.address, '-n', ctd.namespace, ref],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let pullErr = '';
    pull.stderr!.setEncoding('utf8').on('data', (d: string) => (pullErr = (pullErr + d).slice(-4000)));
    if ((await exitedOrAborted(pull, o.signal)) !== 0)
      throw new DfError('INTERNAL', `dfnode pull failed: ${pullErr.trim()}`);

    o.note(`optimize: running ${JSON.stringify(o.cmd.join(' '))} (at most ${o.seconds} s)`);
    task = spawn(
      'ctr',
      ['-a', ctd.address, '-n', ctd.namespace, 'run', '--rm', '--snapshotter', 'dfnode', ref, id, ...o.cmd],
      { stdio: ['ignore', 'ignore', 'pipe'], env: toolEnv },
    );
    task.on('error', () => undefined);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ctd?.ctr(['task', 'kill', '-s', 'SIGKILL', id]).catch(() => undefined);
    }, o.seconds * 1000);
    const code = await exitedOrAborted(task, o.signal).finally(() => clearTimeout(timer));
    o.note(
      `optimize: workload ${timedOut ? `stopped after ${o.seconds} s` : `exited (${code ?? 'signal'})`}`,
    );

    // stop containerd first (no more reads), then dfnode: it writes the recording as it stops
    await ctd.stop();
    await stopChild(node, 30_000);
    const text = await readFile(listFile, 'utf8').catch((err: unknown) => {
      throw DfError.from(err, `dfnode run wrote no read recording (${nodeErr.trim()})`);
    });
    const entries = parsePrefetchList(text);
    o.note(`optimize: recorded ${entries.length} files read by the workload`);
    return entries;
  } finally {
    await stopChild(pull, 2000).catch(() => undefined);
    if (task && task.exitCode === null && task.signalCode === null) {
      // the container first (killing ctr or the shim would leave its processes running), then ctr
      await ctd?.ctr(['task', 'kill', '-s', 'SIGKILL', id]).catch(() => undefined);
      await Promise.race([exited(task), new Promise((r) => setTimeout(r, 5000).unref())]);
    }
    await stopChild(task, 2000).catch(() => undefined);
    // a task ctr left behind (one still being created when it was stopped): killed and deleted
    if (task) await ctd?.ctr(['task', 'delete', '--force', id]).catch(() => undefined);
    await ctd?.stop().catch(() => undefined);
    await stopChild(node, 30_000).catch(() => undefined);
    await unmountUnder(work).catch(() => undefined);
    await registry?.stop().catch(() => undefined);
    await rm(work, { recursive: true, force: true }).catch(() => undefined);
  }
}
