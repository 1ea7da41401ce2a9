import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { cliPath } from './cli.js';
import { freePort } from './registry.js';

/** A long-running `dfnode` child process (seed, preheat, run) with its output kept for assertions. */
export interface Proc {
  child: ChildProcess;
  out(): string;
  err(): string;
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

/** Spawns `dfnode ARGS` (killed at exit of the test process if still running). */
export function dfnodeProc(args: string[], env: NodeJS.ProcessEnv = {}): Proc {
  const child = spawn(process.execPath, [cliPath('dfnode'), ...args], {
    env: { ...process.env, DFNODE_LOG_LEVEL: 'warn', DFNODE_P2P_ANNOUNCE_INTERVAL_MS: '200', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-20_000)));
  const exited = new Promise<number | null>((res) =>
    child.once('exit', (code) => {
      live.delete(child);
      res(code);
    }),
  );
  return {
    child,
    out: () => out,
    err: () => err,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
      await exited;
      clearTimeout(t);
    },
  };
}

/** Waits until the process printed a line matching `re` on stdout; fails when it exits first. */
export async function waitLine(p: Proc, re: RegExp, ms = 300_000): Promise<string> {
  const deadline = Date.now() + ms;
  for (;;) {
    const m = re.exec(p.out());
    if (m) return m[0];
    if (p.child.exitCode !== null || p.child.signalCode !== null || Date.now() > deadline)
      throw new Error(`no ${re} (exit ${p.child.exitCode ?? p.child.signalCode}):\n${p.out()}\n${p.err()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A `dfnode seed` child process on a free loopback port (its tracker on the next one). */
export interface SeedProc {
  proc: Proc;
  /** host:port of its block server. */
  addr: string;
  cache: string;
}

/**
 * Starts `dfnode seed --plain-http` with caches under `dir/<name>-*` on a free loopback port (another
 * port when the one picked was taken meanwhile) and resolves once it serves.
 */
export async function startSeedProc(
  dir: string,
  name: string,
  args: string[] = [],
  env: NodeJS.ProcessEnv = {},
): Promise<SeedProc> {
  const cache = join(dir, `${name}-cache`);
  for (let tries = 0; ; tries++) {
    const addr = `127.0.0.1:${await freePort()}`;
    const proc = dfnodeProc(
      [
        'seed',
        '--plain-http',
        '--cache-dir',
        cache,
        '--state-dir',
        join(dir, `${name}-state`),
        '--p2p-listen',
        addr,
        ...args,
      ],
      // the test registries (any loopback port)
      { DFNODE_P2P_SEED_REGISTRIES: '*', ...env },
    );
    try {
      await waitLine(proc, /^seed serving .*$/m, 20_000);
      return { proc, addr, cache };
    } catch (err) {
      await proc.stop();
      if (tries > 3) throw err;
    }
  }
}

/**
 * Arguments of `dfnode preheat --plain-http --json` for node `i` (caches under `dir/cache-i`, state under
 * `dir/state-i`), its block server on a free loopback port; the image reference goes after `extra`.
 */
export function preheatArgs(dir: string, i: number, seeds: string[], extra: string[] = []): string[] {
  return [
    'preheat',
    '--plain-http',
    '--cache-dir',
    join(dir, `cache-${i}`),
    '--state-dir',
    join(dir, `state-${i}`),
    '--seeds',
    seeds.join(','),
    '--p2p-listen',
    '127.0.0.1:0',
    '--json',
    ...extra,
  ];
}
