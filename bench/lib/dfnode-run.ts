// `dfnode run` (the node daemon with its containerd snapshotter) as a child
// process of a benchmark, with its own cache, state and snapshotter root below
// one directory; stopped by PID, and whatever it left mounted is detached.
import { mkdir, writeFile } from 'node:fs/promises';
import { socketAccepts } from '../../src/util/unix-socket.js';
import { join } from 'node:path';
import { Daemon } from './daemon.js';
import { unmountUnder } from './mounts-under.js';
import { withDaemonFlags } from './main.js';

export interface DfnodeRunOptions {
  /** The dfnode CLI (BuildSnapshot.dfnode) */
  cli: string;
  /** Cache, state, snapshotter root and socket go below it (keep it short: unix sockets have a 108-byte limit). */
  dir: string;
  /** Node.js flags before the CLI (e.g. `--cpu-prof`), after DAEMON_NODE_FLAGS (as bin/dfnode starts it). */
  nodeFlags?: string[];
  /** Extra config, merged over the directories (e.g. `{ fetch: { fillRate: '3M' } }`). */
  config?: Record<string, Record<string, unknown>>;
  /** Serve Prometheus metrics on 127.0.0.1:PORT (off by default). */
  metricsPort?: number;
  /** Wraps the command line (e.g. NetnsHost.netArgv: run it in a host's network namespace). */
  launch?: (cmd: string, args: string[]) => [string, string[]];
  /** More environment (e.g. P2pCluster.memberEnv). */
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** `--log-level` (default warn). */
  logLevel?: string;
  /** Its output is also appended to this file. */
  logFile?: string;
}

export { socketAccepts };

export class DfnodeRun {
  private constructor(
    readonly daemon: Daemon,
    readonly dir: string,
    readonly socket: string,
    readonly cacheDir: string,
    /** Its control socket (control.sock in the state dir): `dfnode pull --control-socket`. */
    readonly controlSocket: string,
    /** Seconds from spawn until the snapshotter socket accepted a connection. */
    readonly startSeconds: number,
    readonly metricsPort?: number,
  ) {}

  static async start(o: DfnodeRunOptions): Promise<DfnodeRun> {
    const cacheDir = join(o.dir, 'cache');
    const socket = join(o.dir, 'snapshotter.sock');
    await mkdir(o.dir, { recursive: true });
    const base: Record<string, Record<string, unknown>> = {
      registry: { plainHttp: true },
      cache: { dir: cacheDir },
      node: {
        stateDir: join(o.dir, 'state'),
        metricsAddress: o.metricsPort ? `127.0.0.1:${o.metricsPort}` : '',
        // in-process FUSE mounts: the benchmark owns every process it starts (no detached fuse manager)
        fuseManager: false,
      },
      snapshotter: { enabled: true, root: join(o.dir, 'snapshotter'), socket },
    };
    for (const [k, v] of Object.entries(o.config ?? {})) base[k] = { ...base[k], ...v };
    const cfg = join(o.dir, 'dfnode.json');
    await writeFile(cfg, JSON.stringify(base));
    const t0 = process.hrtime.bigint();
    const [cmd, args] = (o.launch ?? ((x: string, a: string[]) => [x, a]))(process.execPath, [
      ...withDaemonFlags(o.nodeFlags),
      o.cli,
      'run',
      '-c',
      cfg,
      '--log-level',
      o.logLevel ?? 'warn',
    ]);
    const env = o.env ? { ...process.env, ...o.env } : undefined;
    const d = Daemon.spawn('dfnode run', cmd, args, env, o.logFile);
    const deadline = Date.now() + (o.timeoutMs ?? 60_000);
    try {
      for (;;) {
        if (!d.running) throw new Error(`dfnode run exited before serving ${socket}:\n${d.tail()}`);
        if (await socketAccepts(socket)) break;
        if (Date.now() > deadline) throw new Error(`dfnode run did not serve ${socket}:\n${d.tail()}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    } catch (err) {
      await d.stop(5_000);
      await unmountUnder(o.dir);
      throw err;
    }
    return new DfnodeRun(
      d,
      o.dir,
      socket,
      cacheDir,
      join(o.dir, 'state', 'control.sock'),
      Number(process.hrtime.bigint() - t0) / 1e9,
      o.metricsPort,
    );
  }

  /** Each metric's value summed over its labels (histograms: their _sum and _count series), or {} when off. */
  async metrics(): Promise<Record<string, number>> {
    if (!this.metricsPort) return {};
    const res = await fetch(`http://127.0.0.1:${this.metricsPort}/metrics`, {
      signal: AbortSignal.timeout(5000),
    });
    const out: Record<string, number> = {};
    for (const line of (await res.text()).split('\n')) {
      const m = /^([a-zA-Z_:][\w:]*)(?:\{[^}]*\})? ([-+\d.eE]+|NaN)$/.exec(line);
      if (m && !m[1]!.endsWith('_bucket')) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
    }
    return out;
  }

  /** SIGTERM (dfnode unmounts its layers), SIGKILL after 20 s; then detaches whatever is left below dir. */
  async stop(): Promise<void> {
    await this.daemon.stop(20_000);
    await unmountUnder(this.dir);
  }
}
