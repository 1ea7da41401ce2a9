import { execFile } from 'node:child_process';
import { DfError } from '../errors.js';

/** Runs a system command (mount, umount, ...) with a timeout; rejects with a DfError carrying its stderr. */
export function runCommand(cmd: string, args: string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err) {
        const e = err as NodeJS.ErrnoException & { killed?: boolean };
        if (e.code === 'ENOENT') reject(DfError.notFound(`${cmd} not found; install it (see README)`));
        else if (e.killed)
          reject(DfError.timeout(`${cmd} ${args.join(' ')} timed out after ${timeoutMs} ms`));
        else
          reject(new DfError('IO', `${cmd} ${args.join(' ')} failed: ${String(stderr || e.message).trim()}`));
      } else resolve(stdout);
    });
  });
}
