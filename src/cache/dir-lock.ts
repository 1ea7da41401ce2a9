import { open, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { DfError } from '../errors.js';
import { processRunning } from '../process.js';

/**
 * An exclusive lock on a cache directory for one process: a pid file created with O_EXCL. A lock left by
 * a dead process (no such pid) is taken over; a live holder (including this process) is an error.
 * Two processes never share a cache directory: the second one is told which pid holds it.
 */
export class DirLock {
  private held = false;
  private constructor(readonly path: string) {}

  static async acquire(dir: string, pid = process.pid): Promise<DirLock> {
    const lock = new DirLock(join(dir, 'lock'));
    for (let attempt = 0; attempt < 3; attempt++) {
      try {
        const fh = await open(lock.path, 'wx', 0o644);
        try {
          await fh.writeFile(`${pid}\n`);
          await fh.sync();
        } finally {
          await fh.close();
        }
        lock.held = true;
        return lock;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw DfError.from(err, `lock ${dir}`);
      }
      const holder = Number.parseInt(await readFile(lock.path, 'utf8').catch(() => ''), 10);
      if (Number.isInteger(holder) && holder > 0 && processRunning(holder)) {
        throw new DfError(
          'FAILED_PRECONDITION',
          `cache directory ${dir} is in use by process ${holder}; stop it or use another cache dir`,
          { details: { pid: holder } },
        );
      }
      // stale (dead pid or garbled file): remove and retry
      await unlink(lock.path).catch(() => {});
    }
    throw new DfError('FAILED_PRECONDITION', `cannot lock cache directory ${dir}`);
  }

  async release(): Promise<void> {
    if (!this.held) return;
    this.held = false;
    await unlink(this.path).catch(() => {});
  }
}
