// A private containerd: its own root, state, sockets and config (CRI plugin off unless asked for), started as our child and
// stopped by its PID; a system containerd is never touched. Optionally with dfnode as a proxy snapshotter
// (`[proxy_plugins.dfnode]`). Used by `dfconvert --optimize` and the benchmarks (bench/lib/containerd.ts).
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DfError } from '../errors.js';
import { pidsMentioning } from '../process.js';

const DISABLED_PLUGINS = [
  'io.containerd.grpc.v1.cri',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.aufs',
];

export interface PrivateContainerdOptions {
  /** dfnode's snapshotter socket: registers it as the proxy snapshotter `dfnode`. */
  snapshotterSocket?: string;
  /**
   * Enable the CRI plugin with snapshotter "dfnode" (snapshot annotations on, as for a remote snapshotter) and
   * these registries (host:port) reached over plain HTTP. Needs snapshotterSocket.
   */
  cri?: { insecure: string[] };
  /** Namespace of ctr(). Default `bench`. */
  namespace?: string;
  /** Answer to `ctr version` within this time (ms). Default 15000. */
  timeoutMs?: number;
  /** TMPDIR of containerd (its temporary mounts go there). Default: inherited. */
  tmpDir?: string;
  /** Wraps containerd's command line (e.g. to run it in a network namespace with nsenter). */
  launch?: (cmd: string, args: string[]) => [string, string[]];
}

export interface ToolResult {
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Runs a tool to its end; rejects with its stderr's tail unless it exits 0. */
export function runTool(
  cmd: string,
  args: string[],
  opts: { signal?: AbortSignal; env?: NodeJS.ProcessEnv } = {},
): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: opts.signal,
      env: opts.env ?? process.env,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => reject(DfError.from(e, `${cmd}`)));
    child.on('close', (code, sig) => {
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code !== 0) {
        const tail = stderr.trim().split('\n').slice(-10).join('\n');
        reject(
          new DfError('INTERNAL', `${cmd} ${args.join(' ')} failed (${sig ?? `exit ${code}`}):\n${tail}`),
        );
        return;
      }
      resolve({ stdout, stderr, seconds: Number(process.hrtime.bigint() - t0) / 1e9 });
    });
  });
}

export interface ContainerdConfigOptions {
  /** Holds root/, state/, opt/ and cni/. */
  dir: string;
  /** The gRPC socket (ttrpc's is beside it). */
  socket: string;
  /** The debug socket; '' turns it off (the default would be the system containerd's). */
  debugAddress: string;
  /** dfnode's snapshotter socket: registers it as the proxy snapshotter `dfnode`. */
  snapshotterSocket?: string;
  /** The CRI plugin on (snapshotter dfnode when there is one), these registries (host:port) over plain HTTP. */
  cri?: { insecure: string[] };
}

/** containerd config v2 for a private instance (this module's, and the tests' in test/helpers/containerd.ts). */
export function containerdConfig(o: ContainerdConfigOptions): string {
  const cri = 'plugins."io.containerd.grpc.v1.cri"';
  return [
    'version = 2',
    `root = ${JSON.stringify(join(o.dir, 'root'))}`,
    `state = ${JSON.stringify(join(o.dir, 'state'))}`,
    `disabled_plugins = ${JSON.stringify(o.cri ? DISABLED_PLUGINS.slice(1) : DISABLED_PLUGINS)}`,
    '[grpc]',
    `  address = ${JSON.stringify(o.socket)}`,
    '[ttrpc]',
    `  address = ${JSON.stringify(`${o.socket}.ttrpc`)}`,
    '[debug]',
    `  address = ${JSON.stringify(o.debugAddress)}`,
    '[metrics]',
    '  address = ""',
    '[plugins."io.containerd.internal.v1.opt"]',
    `  path = ${JSON.stringify(join(o.dir, 'opt'))}`,
    ...(o.snapshotterSocket
      ? [
          '[proxy_plugins.dfnode]',
          '  type = "snapshot"',
          `  address = ${JSON.stringify(o.snapshotterSocket)}`,
        ]
      : []),
    ...(o.cri
      ? [
          `[${cri}]`,
          '  disable_tcp_service = true',
          '  stream_server_address = "127.0.0.1"',
          '  stream_server_port = "0"',
          `  [${cri}.containerd]`,
          `    snapshotter = "${o.snapshotterSocket ? 'dfnode' : 'overlayfs'}"`,
          '    disable_snapshot_annotations = false',
          `  [${cri}.cni]`,
          `    bin_dir = ${JSON.stringify(join(o.dir, 'cni', 'bin'))}`,
          `    conf_dir = ${JSON.stringify(join(o.dir, 'cni', 'conf'))}`,
          ...o.cri.insecure.flatMap((h) => [
            `  [${cri}.registry.mirrors.${JSON.stringify(h)}]`,
            `    endpoint = [${JSON.stringify(`http://${h}`)}]`,
          ]),
        ]
      : []),
    '',
  ].join('\n');
}

export class PrivateContainerd {
  readonly address: string;
  readonly namespace: string;
  private child: ChildProcess | undefined;

  private constructor(
    readonly dir: string,
    namespace: string,
  ) {
    this.address = join(dir, 'containerd.sock');
    this.namespace = namespace;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts containerd under `dir` and waits until it answers. */
  static async start(dir: string, opts: PrivateContainerdOptions = {}): Promise<PrivateContainerd> {
    const c = new PrivateContainerd(dir, opts.namespace ?? 'bench');
    const timeoutMs = opts.timeoutMs ?? 15_000;
    await mkdir(dir, { recursive: true });
    const config = join(dir, 'config.toml');
    await writeFile(
      config,
      containerdConfig({
        dir,
        socket: c.address,
        debugAddress: join(dir, 'debug.sock'),
        snapshotterSocket: opts.snapshotterSocket,
        cri: opts.cri,
      }),
    );
    const log = openSync(join(dir, 'containerd.log'), 'a');
    try {
      const [cmd, args] = (opts.launch ?? ((x: string, a: string[]) => [x, a]))('containerd', [
        '--config',
        config,
      ]);
      c.child = spawn(cmd, args, {
        stdio: ['ignore', log, log],
        env: opts.tmpDir ? { ...process.env, TMPDIR: opts.tmpDir } : process.env,
      });
    } finally {
      closeSync(log);
    }
    const exited = new Promise<never>((_, reject) => {
      c.child!.once('error', reject);
      c.child!.once('exit', (code, sig) =>
        reject(
          new DfError(
            'INTERNAL',
            `containerd exited early (${sig ?? code}); see ${join(dir, 'containerd.log')}`,
          ),
        ),
      );
    });
    exited.catch(() => undefined);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (existsSync(c.address)) {
        try {
          await Promise.race([c.ctr(['version']), exited]);
          return c;
        } catch (err) {
          if (c.child.exitCode !== null || c.child.signalCode !== null) throw err;
        }
      }
      if (Date.now() > deadline) {
        await c.stop();
        throw DfError.timeout(`containerd did not answer on ${c.address} within ${timeoutMs} ms`);
      }
      await Promise.race([new Promise((r) => setTimeout(r, 200)), exited]);
    }
  }

  /** `ctr` against this containerd and namespace. */
  ctr(args: string[], tool = 'ctr', signal?: AbortSignal): Promise<ToolResult> {
    return runTool(tool, ['-a', this.address, '-n', this.namespace, ...args], { signal });
  }

  /**
   * SIGTERM by PID, SIGKILL after `graceMs`; then SIGKILL to task shims of this containerd left behind (a
   * container still running after a failure). Safe to call twice.
   */
  async stop(graceMs = 5_000): Promise<void> {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const done = new Promise<void>((r) => child.once('exit', () => r()));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await done;
      clearTimeout(timer);
    }
    this.killShims();
  }

  private killShims(): void {
    if (!this.child) return;
    for (const pid of pidsMentioning(this.address))
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
  }

  /** Synchronous last-resort kill (process 'exit' handlers cannot await). */
  killNow(): void {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    this.killShims();
  }
}
