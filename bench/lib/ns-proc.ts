// A process inside a host's namespace (`ip netns exec NS cmd ...`: ip execs the command, so the child's PID is
// the command's): stdout lines timestamped as they arrive, the tail of stderr kept, stopped or killed by PID.
import { spawn, type ChildProcess } from 'node:child_process';
import { run, type RunOptions, type RunResult } from './measure.js';

/** Where a process runs: a NetnsHost, or this machine's own network (LOCAL_HOST). */
export interface ProcHost {
  readonly ip: string;
  /** The namespace's name, for messages. */
  readonly ns: string;
  /** The argv that runs `cmd args...` there. */
  argv(cmd: string, args: string[]): [string, string[]];
  exec(cmd: string, args: string[], opts?: RunOptions): Promise<RunResult>;
}

/** This machine's own network namespace (loopback): benchmarks that need no shaped links. */
export const LOCAL_HOST: ProcHost = {
  ip: '127.0.0.1',
  ns: 'the root namespace',
  argv: (cmd, args) => [cmd, args],
  exec: (cmd, args, opts) => run(cmd, args, opts),
};

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** A process inside a host's namespace whose stdout lines are timestamped as they arrive. */
export class NsProc {
  readonly started = Date.now();
  private out = '';
  private err = '';
  /** ms since start at which each stdout line arrived. */
  readonly lines: { at: number; line: string }[] = [];
  readonly exited: Promise<number | null>;
  /** Resolves when stdout ends: every line is in `lines` (a child that inherited the pipe may end it later). */
  private readonly drained: Promise<void>;
  private drainWaited = false;

  constructor(
    readonly label: string,
    private readonly child: ChildProcess,
  ) {
    live.add(child);
    child.on('error', () => undefined);
    let buf = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => {
      this.out += d;
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.lines.push({ at: Date.now() - this.started, line: buf.slice(0, i) });
        buf = buf.slice(i + 1);
      }
    });
    this.drained = new Promise((r) => child.stdout!.once('close', () => r()));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.err = (this.err + d).slice(-20_000)));
    this.exited = new Promise((r) =>
      child.once('exit', (code) => {
        live.delete(child);
        r(code);
      }),
    );
  }

  static spawn(
    label: string,
    host: ProcHost,
    cmd: string,
    args: string[],
    env: NodeJS.ProcessEnv = {},
  ): NsProc {
    const [c, a] = host.argv(cmd, args);
    return new NsProc(
      label,
      spawn(c, a, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } }),
    );
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  stdout(): string {
    return this.out;
  }

  stderr(): string {
    return this.err;
  }

  /** The first stdout line matching `re`, with the ms since start at which it arrived. */
  async waitLine(re: RegExp, timeoutMs = 300_000): Promise<{ at: number; line: string }> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const l = this.lines.find((x) => re.test(x.line));
      if (l) return l;
      if (!this.running && !this.drainWaited) {
        // an exited process's last lines may still be in the pipe (or come from a child that inherited it)
        this.drainWaited = true;
        await Promise.race([this.drained, new Promise((r) => setTimeout(r, 2000))]);
        continue;
      }
      if (!this.running || Date.now() > deadline)
        throw new Error(
          `${this.label}: no line ${re} (${this.running ? 'timeout' : `exit ${this.child.exitCode}`}):\n` +
            `${this.out.slice(-4000)}\n${this.err.slice(-4000)}`,
        );
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGTERM by PID, SIGKILL after `graceMs`. Safe to call twice. */
  async stop(graceMs = 10_000): Promise<void> {
    if (!this.running) return;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }

  /** Sends `signal` (default SIGKILL: a crash, no clean-up in the process) by PID; resolves on exit. */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    if (this.running) this.child.kill(signal);
    return this.exited;
  }
}
