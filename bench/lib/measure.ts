// Running a tool and measuring it: wall-clock time and the CPU time of the
// process tree (and of any helper daemon such as containerd), plus medians.
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

export interface RunResult {
  stdout: string;
  stderr: string;
  /** Wall-clock seconds from spawn to exit. */
  seconds: number;
  /** user+system CPU seconds of the child and its reaped descendants (threads included). */
  cpuSeconds: number;
}

let clockTicks: number | undefined;

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number.parseInt(r.stdout ?? '', 10);
    clockTicks = Number.isFinite(n) && n > 0 ? n : 100;
  }
  return clockTicks;
}

/** Fields of /proc/PID/stat after the command name, which may hold spaces. */
function statFields(pid: number | string): string[] | undefined {
  try {
    const text = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** CPU seconds of children this process has waited for (cutime + cstime). */
function reapedChildrenCpu(): number {
  const f = statFields('self');
  if (!f) return Number.NaN;
  // After the name: state(0) ... utime(11) stime(12) cutime(13) cstime(14)
  return (Number(f[13]) + Number(f[14])) / ticksPerSecond();
}

/** CPU seconds a running process has used so far, user and system apart; NaN once it is gone. */
export function processTimes(pid: number): { user: number; system: number } {
  const f = statFields(pid);
  if (!f) return { user: Number.NaN, system: Number.NaN };
  return { user: Number(f[11]) / ticksPerSecond(), system: Number(f[12]) / ticksPerSecond() };
}

/** CPU seconds used so far by a running process (utime + stime). */
export function processCpu(pid: number): number {
  const t = processTimes(pid);
  return t.user + t.system;
}

/**
 * CPU seconds of a running process's main thread and of its other threads (V8's GC and compiler threads,
 * libuv's pool), user and system apart, from /proc/PID/task; `{}` once it has exited.
 */
export function threadCpu(pid: number): Record<'main' | 'others', { user: number; sys: number }> {
  const out = { main: { user: 0, sys: 0 }, others: { user: 0, sys: 0 } };
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return out;
  }
  for (const tid of tids) {
    const f = statFields(`${pid}/task/${tid}`);
    if (!f) continue;
    const t = tid === String(pid) ? out.main : out.others;
    t.user += Number(f[11]) / ticksPerSecond();
    t.sys += Number(f[12]) / ticksPerSecond();
  }
  return out;
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
}

/** Run a command to completion; throws with the tail of stderr when it fails. */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const cpu0 = reapedChildrenCpu();
    const t0 = process.hrtime.bigint();
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
      signal: opts.signal,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code, sig) => {
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const cpuSeconds = reapedChildrenCpu() - cpu0;
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code !== 0) {
        const tail = stderr.trim().split('\n').slice(-10).join('\n');
        reject(new Error(`${cmd} ${args.join(' ')} failed (${sig ?? `exit ${code}`}):\n${tail}`));
        return;
      }
      resolve({ stdout, stderr, seconds, cpuSeconds });
    });
  });
}

/** First line of a command's output, or '?' when it cannot be run. */
export function versionOf(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  const text = `${r.stdout ?? ''}${r.stderr ?? ''}`.trim();
  return r.status === 0 && text ? text.split('\n')[0]! : '?';
}

export function median(xs: number[]): number {
  if (xs.length === 0) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A plain text table with right-aligned numeric columns. */
export function formatTable(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}
