import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'vitest';
import { REPO_ROOT } from './fixtures.js';

export interface CliResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Path of a built CLI entry point (tests run what users run: the compiled program). */
export function cliPath(name: 'dfconvert' | 'dfnode' | 'demo'): string {
  const p = join(REPO_ROOT, 'dist', 'src', 'cli', `${name}.js`);
  if (!existsSync(p)) throw new Error(`${p} is missing: run "npm run build" first (npm test does)`);
  return p;
}

export function runCli(
  name: 'dfconvert' | 'dfnode' | 'demo',
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; onSpawn?: (pid: number) => void } = {},
): Promise<CliResult> {
  return run(process.execPath, [cliPath(name), ...args], {
    ...opts,
    env: { ...process.env, DFNODE_LOG_LEVEL: 'warn', ...opts.env },
  });
}

export function run(
  cmd: string,
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; onSpawn?: (pid: number) => void } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
    if (child.pid) opts.onSpawn?.(child.pid);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 600_000);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

export async function runOk(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** Throws with the command's output unless it exited 0. */
export function expectOk(r: CliResult, what: string): void {
  if (r.code !== 0) throw new Error(`${what} failed with ${r.code}:\n${r.stderr}\n${r.stdout}`);
}

/** A failure a user can read: a non-zero exit (not a signal) and a message matching `pattern`, no stack trace. */
export function expectCleanFailure(r: CliResult, pattern: RegExp, what = ''): void {
  expect(r.code, `${what}: ${r.stderr}`).not.toBe(0);
  expect(r.code).not.toBeNull();
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at .+\(.+:\d+:\d+\)/);
}
