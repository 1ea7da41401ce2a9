// A throw-away dfnode host for one-off container runs (`dfconvert --optimize`, the demo): `dfnode run` as a
// child (own cache, state and snapshotter socket, FUSE mounts served in that process) and a private containerd
// that uses it as its snapshotter; `dfnode pull` and `ctr run` against them. Everything is stopped by PID and
// unmounted under the work directory, also on error and Ctrl-C.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PrivateContainerd } from '../containerd/private-containerd.js';
import { DfError } from '../errors.js';
import { unmountUnder } from '../fuse/mounts.js';
import { socketAccepts } from '../util/unix-socket.js';

const hasTool = (t: string) => spawnSync('sh', ['-c', `command -v ${t}`]).status === 0;

/** What a private node needs on this machine that is missing (empty: all there). */
export function missingForPrivateNode(tools: string[] = []): string[] {
  const missing: string[] = [];
  if (process.getuid?.() !== 0) missing.push('root (FUSE mounts and containerd)');
  if (!existsSync('/dev/fuse')) missing.push('/dev/fuse');
  for (const t of ['containerd', 'ctr', 'runc', ...tools]) if (!hasTool(t)) missing.push(`${t} in PATH`);
  return missing;
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** The child's exit code; rejects as soon as `signal` aborts (the caller then stops the child). */
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

/** The last `max` characters a child wrote on a stream. */
function tail(stream: NodeJS.ReadableStream | null, max = 4000): () => string {
  let text = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (d: string) => (text = (text + d).slice(-max)));
  return () => text.trim();
}

export interface PrivateNodeOptions {
  /** A directory of the caller's (it removes it): cache, state, snapshots, containerd and TMPDIR go below. */
  work: string;
  /** dfnode configuration on top of the private paths (registry, fetch, p2p, node.metricsAddress...). */
  config: { node?: Record<string, unknown> } & Record<string, unknown>;
  /** Extra `dfnode run` arguments (e.g. --record-reads FILE). */
  runArgs?: string[];
  /** containerd namespace. */
  namespace: string;
  signal: AbortSignal;
}

export interface ContainerRun {
  /** ctr's exit code (the container's), null when killed. */
  code: number | null;
  /** Stopped after `seconds`. */
  timedOut: boolean;
  /** What the container wrote on stdout (the last 64 KiB). */
  stdout: string;
  /** The tail of the container's and ctr's stderr. */
  stderr: string;
}

export class PrivateNode {
  private task: ChildProcess | undefined;
  private taskId: string | undefined;
  private pullChild: ChildProcess | undefined;
  private constructor(
    private readonly o: PrivateNodeOptions,
    readonly configFile: string,
    private readonly node: ChildProcess,
    /** Tail of `dfnode run`'s stderr. */
    readonly nodeErr: () => string,
    private readonly toolEnv: NodeJS.ProcessEnv,
    private ctd: PrivateContainerd | undefined,
  ) {}

  get nodePid(): number | undefined {
    return this.node.pid;
  }

  get containerd(): PrivateContainerd {
    return this.ctd!;
  }

  /** Starts `dfnode run` and waits until it serves its snapshotter, then a private containerd using it. */
  static async start(o: PrivateNodeOptions): Promise<PrivateNode> {
    const socket = join(o.work, 'sn.sock');
    const configFile = join(o.work, 'dfnode.json');
    const ctdDir = join(o.work, 'c');
    await mkdir(o.work, { recursive: true });
    await writeFile(
      configFile,
      JSON.stringify({
        ...o.config,
        cache: { dir: join(o.work, 'cache') },
        node: {
          stateDir: join(o.work, 'state'),
          metricsAddress: '',
          fuseManager: false,
          // per-container metrics ask this containerd, never the host's
          containerdAddress: join(ctdDir, 'containerd.sock'),
          ...o.config.node,
        },
        snapshotter: { enabled: true, root: join(o.work, 'snap'), socket },
      }),
    );
    // containerd and ctr mount snapshots in TMPDIR for a moment (user lookup): below `work`, so that a
    // mount left by an interrupted ctr is unmounted with the rest
    const tmp = join(o.work, 'tmp');
    await mkdir(tmp, { recursive: true });
    const dfnode = fileURLToPath(new URL('./dfnode.js', import.meta.url));
    const node = spawn(process.execPath, [dfnode, 'run', '-c', configFile, ...(o.runArgs ?? [])], {
      stdio: ['ignore', 'ignore', 'pipe'],
      env: { ...process.env, DFNODE_LOG_LEVEL: 'warn' },
    });
    const pn = new PrivateNode(
      o,
      configFile,
      node,
      tail(node.stderr),
      { ...process.env, TMPDIR: tmp },
      undefined,
    );
    try {
      const deadline = Date.now() + 60_000;
      while (!(await socketAccepts(socket))) {
        if (node.exitCode !== null || node.signalCode !== null)
          throw new DfError('INTERNAL', `dfnode run exited during start: ${pn.nodeErr()}`);
        if (Date.now() > deadline) throw DfError.timeout(`dfnode run did not serve ${socket} within 60 s`);
        o.signal.throwIfAborted();
        await new Promise((r) => setTimeout(r, 100));
      }
      pn.ctd = await PrivateContainerd.start(ctdDir, {
        snapshotterSocket: socket,
        namespace: o.namespace,
        tmpDir: tmp,
      });
      return pn;
    } catch (err) {
      await pn.close();
      throw err;
    }
  }

  /** `dfnode pull REF` into the private containerd (lazy: manifest, config and TOCs). */
  async pull(ref: string): Promise<void> {
    const dfnode = fileURLToPath(new URL('./dfnode.js', import.meta.url));
    const ctd = this.containerd;
    const pull = spawn(
      process.execPath,
      [dfnode, 'pull', '-c', this.configFile, '--address', ctd.address, '-n', ctd.namespace, ref],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.pullChild = pull;
    const err = tail(pull.stderr);
    if ((await exitedOrAborted(pull, this.o.signal)) !== 0)
      throw new DfError('INTERNAL', `dfnode pull failed: ${err()}`);
  }

  /**
   * `ctr images pull --hosts-dir DIR REF` into the private containerd (its own snapshotter, overlayfs): the
   * registry hosts of DIR (a hosts.toml naming a mirror) instead of the registry; stopped on abort.
   */
  async pullWithHosts(ref: string, hostsDir: string): Promise<void> {
    await this.containerd.ctr(['images', 'pull', '--hosts-dir', hostsDir, ref], 'ctr', this.o.signal);
  }

  /**
   * `ctr run --rm --snapshotter SNAPSHOTTER REF ID [CMD...]` (no CMD: the image's own command) until it exits or,
   * with `seconds`, until that time has passed (then the container is killed).
   */
  async run(
    ref: string,
    id: string,
    cmd: string[],
    seconds?: number,
    snapshotter = 'dfnode',
  ): Promise<ContainerRun> {
    const ctd = this.containerd;
    this.taskId = id;
    const task = spawn(
      'ctr',
      ['-a', ctd.address, '-n', ctd.namespace, 'run', '--rm', '--snapshotter', snapshotter, ref, id, ...cmd],
      { stdio: ['ignore', 'pipe', 'pipe'], env: this.toolEnv },
    );
    this.task = task;
    task.on('error', () => undefined);
    const stdout = tail(task.stdout, 64 * 1024);
    const stderr = tail(task.stderr);
    // 'exit' can come before the last of stdout was read: the output is complete at 'close'
    const closed = new Promise((r) => task.once('close', r));
    let timedOut = false;
    const timer =
      seconds === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            ctd.ctr(['task', 'kill', '-s', 'SIGKILL', id]).catch(() => undefined);
          }, seconds * 1000);
    const code = await exitedOrAborted(task, this.o.signal).finally(() => clearTimeout(timer));
    await Promise.race([closed, new Promise((r) => setTimeout(r, 5000).unref())]);
    return { code, timedOut, stdout: stdout(), stderr: stderr() };
  }

  /** Stops containerd (no more reads), then `dfnode run` (it writes a read recording as it stops). */
  async stopGracefully(): Promise<void> {
    await this.ctd?.stop();
    await stopChild(this.node, 30_000);
  }

  /** Stops and unmounts everything it started (idempotent). */
  async close(): Promise<void> {
    await stopChild(this.pullChild, 2000).catch(() => undefined);
    const task = this.task;
    if (task && task.exitCode === null && task.signalCode === null && this.taskId) {
      // the container first (killing ctr or the shim would leave its processes running), then ctr
      await this.ctd?.ctr(['task', 'kill', '-s', 'SIGKILL', this.taskId]).catch(() => undefined);
      await Promise.race([exited(task), new Promise((r) => setTimeout(r, 5000).unref())]);
    }
    await stopChild(task, 2000).catch(() => undefined);
    // a task ctr left behind (one still being created when it was stopped): killed and deleted
    if (task && this.taskId)
      await this.ctd?.ctr(['task', 'delete', '--force', this.taskId]).catch(() => undefined);
    await this.ctd?.stop().catch(() => undefined);
    await stopChild(this.node, 30_000).catch(() => undefined);
    await unmountUnder(this.o.work).catch(() => undefined);
  }
}
