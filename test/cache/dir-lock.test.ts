import { fork, spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DirLock } from '../../src/cache/dir-lock.js';

const WORKER = fileURLToPath(new URL('./dir-lock-worker.ts', import.meta.url));

/** A child process that takes and gives back locks on request (see dir-lock-worker.ts). */
class Worker {
  readonly child: ChildProcess;
  private waiters: ((m: any) => void)[] = [];
  readonly ready: Promise<unknown>;
  constructor() {
    this.child = fork(WORKER, [], {
      execArgv: ['--import', 'tsx'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.child.on('message', (m) => this.waiters.shift()?.(m));
    this.ready = new Promise((r) => this.waiters.push(r));
  }
  ask(msg: object): Promise<any> {
    return new Promise((r) => {
      this.waiters.push(r);
      this.child.send(msg);
    });
  }
  get pid(): number {
    return this.child.pid!;
  }
}

/** A pid that is not running: a process that has exited and been reaped. */
async function deadPid(): Promise<number> {
  const c = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  const pid = c.pid!;
  await new Promise((r) => c.on('exit', r));
  return pid;
}

describe('DirLock (flock)', () => {
  let dir: string;
  const workers: Worker[] = [];
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dfnode-lock-'));
    workers.push(new Worker(), new Worker());
    await Promise.all(workers.map((w) => w.ready));
  });
  afterAll(async () => {
    for (const w of workers) w.child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  });

  it('two processes racing for a stale lock never both win', async () => {
    const stale = await deadPid();
    const trials = 100;
    for (let i = 0; i < trials; i++) {
      const d = join(dir, `race-${i}`);
      await rm(d, { recursive: true, force: true });
      await mkdir(d);
      await writeFile(join(d, 'lock'), `${stale}\n`);
      const results = await Promise.all(workers.map((w) => w.ask({ op: 'acquire', dir: d })));
      const winners = results.filter((r) => r.won).length;
      expect(winners, `trial ${i}: ${JSON.stringify(results)}`).toBe(1);
      const loser = results.find((r) => !r.won);
      expect(loser.message).toMatch(/in use by (process \d+|another process)/);
      await Promise.all(workers.map((w) => w.ask({ op: 'release' })));
    }
  });

  it('a lock file holding our own pid (a restart in a fresh pid namespace) does not block us', async () => {
    const d = await mkdtemp(join(dir, 'own-'));
    await writeFile(join(d, 'lock'), `${process.pid}\n`);
    const l = await DirLock.acquire(d);
    expect(l.held).toBe(true);
    await l.release();
  });

  it('a live holder is refused with a message naming its pid; its death frees the lock', async () => {
    const d = await mkdtemp(join(dir, 'live-'));
    const holder = new Worker();
    try {
      await holder.ready;
      expect(await holder.ask({ op: 'acquire', dir: d })).toEqual({ won: true });
      expect(await readFile(join(d, 'lock'), 'utf8')).toBe(`${holder.pid}\n`);
      await expect(DirLock.acquire(d)).rejects.toMatchObject({
        code: 'FAILED_PRECONDITION',
        message: expect.stringContaining(`in use by process ${holder.pid}`),
      });
      // the kernel drops the lock with the process: no cleanup, no stale pid to judge
      const gone = new Promise((r) => holder.child.on('exit', r));
      holder.child.kill('SIGKILL');
      await gone;
      const l = await DirLock.acquire(d);
      await l.release();
    } finally {
      holder.child.kill('SIGKILL');
    }
  });

  it('locks within one process conflict too, and release gives the lock back', async () => {
    const d = await mkdtemp(join(dir, 'same-'));
    const a = await DirLock.acquire(d, process.pid, { name: 'root.lock', what: 'snapshotter root' });
    await expect(DirLock.acquire(d, process.pid, { name: 'root.lock' })).rejects.toMatchObject({
      code: 'FAILED_PRECONDITION',
    });
    await a.release();
    await a.release();
    const b = await DirLock.acquire(d, process.pid, { name: 'root.lock' });
    await b.release();
  });
});
