// A private containerd for benchmarks: its own root, state, sockets and
// config (no CRI plugin), started as our child and stopped by its PID.
// A system containerd is never touched.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, closeSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from './measure.js';

const DISABLED_PLUGINS = [
  'io.containerd.grpc.v1.cri',
  'io.containerd.snapshotter.v1.btrfs',
  'io.containerd.snapshotter.v1.zfs',
  'io.containerd.snapshotter.v1.devmapper',
  'io.containerd.snapshotter.v1.aufs',
];

export class PrivateContainerd {
  readonly address: string;
  readonly namespace = 'bench';
  private child: ChildProcess | undefined;

  private constructor(readonly dir: string) {
    this.address = join(dir, 'containerd.sock');
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Start containerd under `dir` and wait until it answers (at most `timeoutMs`). */
  static async start(dir: string, timeoutMs = 15_000): Promise<PrivateContainerd> {
    const c = new PrivateContainerd(dir);
    await mkdir(dir, { recursive: true });
    const config = join(dir, 'config.toml');
    await writeFile(
      config,
      [
        'version = 2',
        `root = ${JSON.stringify(join(dir, 'root'))}`,
        `state = ${JSON.stringify(join(dir, 'state'))}`,
        `disabled_plugins = ${JSON.stringify(DISABLED_PLUGINS)}`,
        '[grpc]',
        `  address = ${JSON.stringify(c.address)}`,
        '[ttrpc]',
        `  address = ${JSON.stringify(`${c.address}.ttrpc`)}`,
        '[debug]',
        `  address = ${JSON.stringify(join(dir, 'debug.sock'))}`,
        '',
      ].join('\n'),
    );
    const log = openSync(join(dir, 'containerd.log'), 'a');
    try {
      c.child = spawn('containerd', ['--config', config], { stdio: ['ignore', log, log] });
    } finally {
      closeSync(log);
    }
    const exited = new Promise<never>((_, reject) => {
      c.child!.once('error', reject);
      c.child!.once('exit', (code, sig) =>
        reject(new Error(`containerd exited early (${sig ?? code}); see ${join(dir, 'containerd.log')}`)),
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
        throw new Error(`containerd did not answer on ${c.address} within ${timeoutMs} ms`);
      }
      await Promise.race([new Promise((r) => setTimeout(r, 200)), exited]);
    }
  }

  /** `ctr` against this containerd and namespace. */
  ctr(args: string[], tool = 'ctr') {
    return run(tool, ['-a', this.address, '-n', this.namespace, ...args]);
  }

  /** SIGTERM by PID, SIGKILL after `graceMs`. Safe to call twice. */
  async stop(graceMs = 5_000): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const done = new Promise<void>((r) => child.once('exit', () => r()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await done;
    clearTimeout(timer);
  }

  /** Synchronous last-resort kill (process 'exit' handlers cannot await). */
  killNow(): void {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
}
