import { statfs } from 'node:fs/promises';
import { DfError } from '../errors.js';

/** Bytes an unprivileged writer can still use on the file system of `dir`. */
export async function freeBytes(dir: string): Promise<number> {
  const s = await statfs(dir);
  return s.bavail * s.bsize;
}

const mib = (n: number) => `${(n / 1024 ** 2).toFixed(1)} MiB`;

/**
 * Refuses large work up front when `dir` cannot hold `needBytes` more: NO_SPACE naming the work, the
 * directory and both sizes, instead of a write failing half-way. `free` is injectable for tests.
 */
export async function ensureFreeSpace(
  dir: string,
  needBytes: number,
  what: string,
  hint: string,
  free: (dir: string) => Promise<number> = freeBytes,
): Promise<void> {
  if (needBytes <= 0) return;
  const have = await free(dir);
  if (have >= needBytes) return;
  throw new DfError(
    'NO_SPACE',
    `no space left for ${what}: it needs about ${mib(needBytes)} in ${dir}, which has ${mib(have)} free: ${hint}`,
  );
}
