// A long-running child process of a benchmark (registry, dfnode mount,
// squashfuse): started, waited for, measured by PID, stopped by PID.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, readdirSync, readFileSync } from 'node:fs';
import { processCpu } from './measure.js';

let clk: number | undefined;
function ticksPerSecond(): number {
  clk ??= Number.parseInt(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout ?? '', 10) || 100;
  return clk;
}

const live = new Set<Daemon>();
process.once('exit', () => {
  for (const d of live) d.killNow();
});

/** Every daemon still running (for signal handlers that must stop them before cleaning up). */
export function liveDaemons(): Daemon[] {
  return [...live];
}

export class Daemon {
  private output = '';
  private readonly exited: Promise<void>;

  private constructor(
    readonly label: string,
    private readonly child: ChildProcess,
  ) {
    const keep = (d: Buffer) => {
      this.output = (this.output + d.toString('utf8')).slice(-16_000);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    this.exited = new Promise((r) => child.once('exit', () => r()));
    void this.exited.then(() => live.delete(this));
    live.add(this);
  }

  /** `logFile`: all its output (stdout and stderr) is also appended there. */
  static spawn(
    label: string,
    cmd: string,
    args: string[],
    env?: NodeJS.ProcessEnv,
    logFile?: string,
  ): Daemon {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    child.on('error', () => undefined);
    if (logFile) {
      const out = createWriteStream(logFile, { flags: 'a' });
      out.on('error', () => undefined);
      child.stdout?.pipe(out, { end: false });
      child.stderr?.pipe(out, { end: false });
      child.once('close', () => out.end());
    }
    return new Daemon(label, child);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Last output (stdout and stderr mixed), for error messages. */
  tail(lines = 15): string {
    return this.output.trim().split('\n').slice(-lines).join('\n');
  }

  /** Resolves when the output matches `re`; rejects if the process exits or `timeoutMs` passes first. */
  async waitFor(re: RegExp, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!re.test(this.output)) {
      if (!this.running) throw new Error(`${this.label} exited before ready:\n${this.tail()}`);
      if (Date.now() > deadline)
        throw new Error(`${this.label} not ready after ${timeoutMs} ms:\n${this.tail()}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** CPU seconds (user+sys, all threads) used so far. */
  cpu(): number {
    return processCpu(this.pid);
  }

  /** CPU seconds of each thread so far, by thread name (`comm`); the main thread is keyed `main`. */
  threadCpu(): Map<string, number> {
    const out = new Map<string, number>();
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${this.pid}/task`);
    } catch {
      return out;
    }
    for (const tid of tids) {
      try {
        const text = readFileSync(`/proc/${this.pid}/task/${tid}/stat`, 'utf8');
        const name =
          tid === String(this.pid) ? 'main' : text.slice(text.indexOf('(') + 1, text.lastIndexOf(')'));
        const f = text.slice(text.lastIndexOf(')') + 2).split(' ');
        const s = (Number(f[11]) + Number(f[12])) / ticksPerSecond();
        out.set(name, (out.get(name) ?? 0) + s);
      } catch {
        // thread gone
      }
    }
    return out;
  }

  /** SIGTERM (or `signal`), SIGKILL after `graceMs`. Safe to call twice. */
  async stop(graceMs = 15_000, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.running) return;
    this.child.kill(signal);
    const t = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(t);
  }

  killNow(): void {
    if (this.running) this.child.kill('SIGKILL');
  }
}
