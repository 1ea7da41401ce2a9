// `dfnode mount REF DIR` as a child process (never in the benchmark's own
// process: a synchronous fs call on a FUSE path served by the same process
// deadlocks), with its own cache and state directories.
import { writeFile } from 'node:fs/promises';
import { Daemon } from './daemon.js';
import { run } from './measure.js';
import { unmountUnder } from './mounts-under.js';
import { withDaemonFlags } from './main.js';

export interface DfnodeMountOptions {
  /** dist/src/cli/dfnode.js */
  cli: string;
  ref: string;
  target: string;
  cacheDir: string;
  stateDir: string;
  /** A config file's content (e.g. `{ fetch: { backgroundFill: false } }`), written next to the state dir. */
  config?: Record<string, unknown>;
  fillRate?: string;
  /** Node.js flags before the script (e.g. --cpu-prof, which NODE_OPTIONS does not allow), after DAEMON_NODE_FLAGS. */
  nodeFlags?: string[];
}

interface StatusJson {
  mounts: Array<{ pid: number; layers: string[]; stats?: { bytes: Record<string, number> } }>;
  blobs: Array<{ digest: string; size: number; filledBytes: number; complete: boolean }>;
}

export class DfnodeMount {
  private constructor(
    readonly opts: DfnodeMountOptions,
    readonly daemon: Daemon,
    /** Seconds from spawn to the "mounted" line. */
    readonly mountSeconds: number,
  ) {}

  static async start(o: DfnodeMountOptions): Promise<DfnodeMount> {
    const args = [
      o.cli,
      'mount',
      o.ref,
      o.target,
      '--plain-http',
      '--cache-dir',
      o.cacheDir,
      '--state-dir',
      o.stateDir,
      '--metrics-address',
      '',
      '--log-level',
      'warn',
    ];
    if (o.fillRate) args.push('--fill-rate', o.fillRate);
    if (o.config) {
      const cfg = `${o.stateDir}.config.json`;
      await writeFile(cfg, JSON.stringify(o.config));
      args.push('-c', cfg);
    }
    const t0 = process.hrtime.bigint();
    const d = Daemon.spawn('dfnode mount', process.execPath, [...withDaemonFlags(o.nodeFlags), ...args]);
    try {
      await d.waitFor(/^mounted /m, 120_000);
    } catch (err) {
      await d.stop(5_000);
      await unmountUnder(o.target);
      await unmountUnder(o.stateDir);
      throw err;
    }
    return new DfnodeMount(o, d, Number(process.hrtime.bigint() - t0) / 1e9);
  }

  async status(): Promise<StatusJson> {
    const r = await run(process.execPath, [
      this.opts.cli,
      'status',
      '--json',
      '--cache-dir',
      this.opts.cacheDir,
      '--state-dir',
      this.opts.stateDir,
    ]);
    return JSON.parse(r.stdout) as StatusJson;
  }

  /** Polls `dfnode status --json` until every layer of this mount is complete in the cache. */
  async waitFilled(timeoutMs: number, progress?: (filled: number, size: number) => void): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const s = await this.status();
      const rec = s.mounts.find((m) => m.pid === this.daemon.pid);
      const blobs = s.blobs.filter((b) => rec?.layers.includes(b.digest));
      if (rec && blobs.length === rec.layers.length && blobs.every((b) => b.complete)) return;
      progress?.(
        blobs.reduce((a, b) => a + b.filledBytes, 0),
        blobs.reduce((a, b) => a + b.size, 0),
      );
      if (!this.daemon.running) throw new Error(`dfnode mount exited:\n${this.daemon.tail()}`);
      if (Date.now() > deadline) throw new Error(`background fill not complete after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  /** SIGTERM (dfnode unmounts everything), then detaches whatever is left under the target and state dir. */
  async stop(): Promise<void> {
    await this.daemon.stop(20_000);
    await unmountUnder(this.opts.target);
    await unmountUnder(this.opts.stateDir);
  }
}
