import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { bound, type Timers } from '../util/timers.js';

/**
 * Whether the cache directory has room for `missing` more bytes of a blob (statfs). Without it the seed
 * does not fill the blob: it serves the blocks nodes ask for (a full disk does not stop a verified block
 * from reaching its reader) instead of filling the disk and failing block after block.
 */
export async function roomForBlob(
  dir: string,
  digest: string,
  missing: number,
  freeBytes: (dir: string) => Promise<number>,
  timers: Timers,
  log: Logger,
): Promise<boolean> {
  let free: number;
  try {
    free = await bound(freeBytes(dir), { ms: 10_000, timers, what: `statfs ${dir}` });
  } catch (err) {
    log.warn({ err, dir }, 'seed could not read the free space of its cache; filling anyway');
    return true;
  }
  if (missing <= free) return true;
  const err = new DfError(
    'NO_SPACE',
    `seed cache ${dir} has ${free} bytes free and blob ${digest} needs ${missing} more: not filling it ` +
      '(requested blocks are still served); free disk space or lower cache.highWatermark',
  );
  log.warn({ err, digest }, 'seed cannot hold a full copy of a blob');
  return false;
}
