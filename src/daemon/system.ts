import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { DfError } from '../errors.js';

/** Runs a system command (mount, umount, ...) with a timeout; rejects with a DfError carrying its stderr. */
export function runCommand(cmd: string, args: string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const e = err as NodeJS.ErrnoException & { killed?: boolean };
        if (e.code === 'ENOENT') reject(DfError.notFound(`${cmd} not found; install it (see README)`));
        else if (e.killed) reject(DfError.timeout(`${cmd} ${args.join(' ')} timed out after ${timeoutMs} ms`));
        else reject(new DfError('IO', `${cmd} ${args.join(' ')} failed: ${String(stderr || e.message).trim()}`));
      } else resolve(stdout);
    });
  });
}

export interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
  options: string;
}

function unescapeMount(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Mounts of this mount namespace (from /proc/self/mountinfo). */
export async function listMounts(): Promise<MountInfo[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const f = pre.split(' ');
    const g = post.split(' ');
    out.push({ mountpoint: unescapeMount(f[4]!), fstype: g[0]!, source: unescapeMount(g[1] ?? ''), options: f[5] ?? '' });
  }
  return out;
}

export async function isMountpoint(path: string): Promise<boolean> {
  return (await listMounts()).some((m) => m.mountpoint === path);
}

/** Unmounts `path`; lazily (detach) when it is busy or its FUSE server is gone. */
export async function unmount(path: string): Promise<void> {
  try {
    await runCommand('umount', [path], 15_000);
  } catch {
    await runCommand('umount', ['-l', path], 15_000).catch(async (err) => {
      if (await isMountpoint(path)) throw err;
    });
  }
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
