// What every benchmark program does around its measurements: log to stderr, say which code it measured,
// stop its children on a signal, and turn main()'s result into the exit code.
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/node-flags.js';

/** `[bench/NAME] message` lines on stderr (stdout holds the results). */
export function benchLog(name: string): (msg: string) => void {
  return (msg) => void process.stderr.write(`[bench/${name}] ${msg}\n`);
}

/**
 * Short HEAD of the checkout at `repo`, `+dirty` when `paths` differ from it (the code that was measured),
 * `?` outside a git checkout of `repo`. DFNODE_BENCH_COMMIT overrides it (a build made from `git archive`).
 */
export function gitState(repo: string, paths: string[]): string {
  if (process.env.DFNODE_BENCH_COMMIT) return process.env.DFNODE_BENCH_COMMIT;
  const git = (...args: string[]) => spawnSync('git', ['-C', repo, ...args], { encoding: 'utf8' });
  const head = git('rev-parse', '--short', 'HEAD');
  const top = git('rev-parse', '--show-toplevel').stdout.trim();
  if (head.status !== 0 || resolve(top) !== resolve(repo)) return '?';
  const dirty = git('status', '--porcelain', '--', ...paths).stdout.trim() !== '';
  return `${head.stdout.trim()}${dirty ? '+dirty' : ''}`;
}

/**
 * Node.js flags for the dfnode daemons (`run`, `seed`) a benchmark starts: those bin/dfnode gives them
 * (DAEMON_NODE_FLAGS), then the benchmark's `--cpu-prof DIR` and `--node-flags "FLAGS"` options (V8 takes
 * the last of a flag given twice: `--node-flags=--initial-old-space-size=0` measures without the floor).
 */
export function nodeFlagsFrom(flags: { 'cpu-prof'?: string; 'node-flags'?: string }): string[] {
  return withDaemonFlags([
    ...(flags['cpu-prof'] ? ['--cpu-prof', `--cpu-prof-dir=${flags['cpu-prof']}`] : []),
    ...(flags['node-flags']?.split(/\s+/).filter(Boolean) ?? []),
  ]);
}

/** DAEMON_NODE_FLAGS (those bin/dfnode gives dfnode's daemons) missing from `flags`, then `flags`. */
export function withDaemonFlags(flags: readonly string[] = []): string[] {
  return [...DAEMON_NODE_FLAGS.filter((f) => !flags.includes(f)), ...flags];
}

/** SIGTERM to this process's children (found with ps) except those `keep` returns true for. */
export function stopChildren(keep: (pid: number) => boolean = () => false): void {
  const kids = spawnSync('ps', ['-o', 'pid=', '--ppid', String(process.pid)], { encoding: 'utf8' });
  for (const pid of (kids.stdout ?? '').split('\n').map(Number))
    if (pid > 0 && pid !== kids.pid && !keep(pid)) process.kill(pid, 'SIGTERM');
}

/** Runs main and exits with its code; a failure is logged and exits 1. */
export function runMain(main: () => Promise<number>, log: (msg: string) => void): void {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      log(`failed: ${err instanceof Error ? err.message : String(err)}`);
      process.exit(1);
    },
  );
}
