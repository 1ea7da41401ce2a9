import { constants, existsSync } from 'node:fs';
import { access, open } from 'node:fs/promises';
import { join } from 'node:path';
import { startTimeOf } from '../containerd/cgroup.js';

/** What the container meter reads about processes and cgroups (the real /proc and /sys, or a fake in tests). */
export interface ProcReader {
  /** The text of /proc/PID/cgroup (bounded; an incomplete last line is dropped), undefined when it is gone. */
  cgroup(pid: number): Promise<string | undefined>;
  /** The start time of PID (from /proc/PID/stat), undefined when it is gone or unreadable. */
  startTime(pid: number): Promise<number | undefined>;
  /** Whether the cgroup directory of `path` exists now; undefined when this host cannot tell. */
  cgroupAlive(path: string): Promise<boolean | undefined>;
}

/** Bytes read at most from one /proc file: a hostile or huge file costs no more than this. */
export const MAX_PROC_READ = 64 * 1024;

/**
 * Up to `max` bytes of a file (proc files are read sequentially), as UTF-8; when the file is longer, the last
 * incomplete line is dropped, so a cut never yields a shorter but valid-looking line. Undefined on any error.
 */
export async function readBounded(path: string, max = MAX_PROC_READ): Promise<string | undefined> {
  let fh;
  try {
    fh = await open(path, 'r');
  } catch {
    return undefined;
  }
  try {
    const buf = Buffer.allocUnsafe(max);
    let n = 0;
    for (;;) {
      const { bytesRead } = await fh.read(buf, n, max - n, null);
      if (bytesRead === 0) break;
      n += bytesRead;
      if (n === max) {
        const nl = buf.lastIndexOf(0x0a, n - 1);
        n = nl < 0 ? 0 : nl + 1;
        break;
      }
    }
    return buf.toString('utf8', 0, n);
  } catch {
    return undefined;
  } finally {
    await fh.close().catch(() => undefined);
  }
}

/** ProcReader over /proc and /sys/fs/cgroup (`root` for tests: a directory laid out like them). */
export class HostProcReader implements ProcReader {
  private readonly unified: boolean;

  constructor(
    private readonly procRoot = '/proc',
    private readonly cgroupRoot = '/sys/fs/cgroup',
  ) {
    this.unified = existsSync(join(cgroupRoot, 'cgroup.controllers'));
  }

  cgroup(pid: number): Promise<string | undefined> {
    return readBounded(join(this.procRoot, String(pid), 'cgroup'));
  }

  async startTime(pid: number): Promise<number | undefined> {
    const text = await readBounded(join(this.procRoot, String(pid), 'stat'), 4096);
    return text === undefined ? undefined : startTimeOf(text);
  }

  async cgroupAlive(path: string): Promise<boolean | undefined> {
    // paths above our cgroup namespace's root (/..) are not under our /sys/fs/cgroup
    if (!path.startsWith('/') || path.split('/').includes('..')) return undefined;
    const base = this.unified ? this.cgroupRoot : join(this.cgroupRoot, 'pids');
    if (!existsSync(base)) return undefined;
    try {
      await access(join(base, path), constants.F_OK);
      return true;
    } catch {
      return false;
    }
  }
}
