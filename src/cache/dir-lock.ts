import { spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { DfError } from '../errors.js';

const FLOCK_TIMEOUT_MS = 10_000;
/** The exit status we ask flock(1) to use when the lock is held elsewhere (`-E`), distinct from its errors. */
const BUSY = 75;

/**
 * An exclusive lock on a directory for one process: `flock(2)` on `<dir>/<name>`, which also holds the
 * holder's pid (for the message a second process gets, nothing else).
 *
 * Why flock: the kernel drops the lock when the holder's last descriptor closes, so when the process dies.
 * There is no stale-pid logic to get wrong: no takeover race between two processes that both saw a dead
 * pid, and no false "in use" for a pid file that holds our own pid (a container restarted in a fresh pid
 * namespace). Node has no flock API; rather than a native addon (and its build) or an npm package with
 * node-gyp, we open the file here and let util-linux `flock -n FD` lock that very descriptor: a flock
 * belongs to the open file description, which the child shares, so the lock outlives the child and lives
 * exactly as long as this process keeps the file open (libuv opens with O_CLOEXEC, so no other child of
 * ours inherits it). The lock file is never unlinked: removing it would let two processes lock two inodes.
 */
export class DirLock {
  private constructor(
    readonly path: string,
    private fh: FileHandle | undefined,
  ) {}

  /**
   * Locks `dir` (`name` is the lock file, `what` names the directory in messages). A directory locked by a
   * live process is a FAILED_PRECONDITION naming that process's pid when it wrote one.
   */
  static async acquire(
    dir: string,
    pid = process.pid,
    opts: { name?: string; what?: string } = {},
  ): Promise<DirLock> {
    const path = join(dir, opts.name ?? 'lock');
    const what = opts.what ?? 'cache directory';
    let fh: FileHandle;
    try {
      fh = await open(path, constants.O_RDWR | constants.O_CREAT, 0o644);
    } catch (err) {
      throw DfError.from(err, `open lock file ${path}`);
    }
    try {
      if (!(await flockNonBlocking(fh.fd, path))) {
        const text = await fh.readFile('utf8').catch(() => '');
        const holder = Number.parseInt(text, 10);
        const who = Number.isInteger(holder) && holder > 0 ? `process ${holder}` : 'another process';
        throw new DfError(
          'FAILED_PRECONDITION',
          `${what} ${dir} is in use by ${who} (lock ${path}); stop it or use another directory`,
          { details: { pid: Number.isInteger(holder) && holder > 0 ? holder : undefined, path } },
        );
      }
      await fh.truncate(0);
      await fh.write(`${pid}\n`, 0);
      await fh.sync();
    } catch (err) {
      await fh.close().catch(() => undefined);
      throw DfError.from(err, `lock ${path}`);
    }
    return new DirLock(path, fh);
  }

  /** Whether this handle still holds the lock. */
  get held(): boolean {
    return this.fh !== undefined;
  }

  /** Gives the lock up (closing the descriptor drops it); idempotent. */
  async release(): Promise<void> {
    const fh = this.fh;
    if (!fh) return;
    this.fh = undefined;
    await fh.truncate(0).catch(() => undefined);
    await fh.close().catch(() => undefined);
  }
}

/** `flock -n -x` on descriptor `fd` through util-linux flock(1): true when locked, false when held elsewhere. */
function flockNonBlocking(fd: number, path: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const child = spawn('flock', ['-n', '-x', '-E', String(BUSY), '3'], {
      stdio: ['ignore', 'ignore', 'pipe', fd],
      timeout: FLOCK_TIMEOUT_MS,
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (d: string) => {
      if (stderr.length < 4096) stderr += d;
    });
    child.on('error', (err) => {
      const missing = (err as NodeJS.ErrnoException).code === 'ENOENT';
      reject(
        new DfError(
          'FAILED_PRECONDITION',
          missing
            ? `cannot lock ${path}: flock(1) not found; install util-linux`
            : `cannot lock ${path}: ${err.message}`,
          { cause: err },
        ),
      );
    });
    child.on('close', (code, sig) => {
      if (code === 0) resolve(true);
      else if (code === BUSY) resolve(false);
      else
        reject(
          new DfError(
            'IO',
            `cannot lock ${path}: flock exited with ${sig ?? code}${stderr ? `: ${stderr.trim()}` : ''}`,
          ),
        );
    });
  });
}
