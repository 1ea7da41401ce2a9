// Emptying the page cache before a cold measurement: `echo 3 > drop_caches`
// (page cache, dentries and inodes, system-wide) where that is allowed, else
// posix_fadvise(DONTNEED) on the given backing files (through python3, which
// has os.posix_fadvise; Node has no fadvise).
import { writeFile } from 'node:fs/promises';
import { run } from './measure.js';

export type DropMethod = 'drop_caches' | 'fadvise' | 'none';

const FADVISE = `
import os, sys
for root in sys.argv[1:]:
    paths = [root] if os.path.isfile(root) else (os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    for p in paths:
        try:
            if os.path.islink(p) or not os.path.isfile(p): continue
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
            try: os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally: os.close(fd)
        except OSError: pass
`;

/**
 * `sync`, then drops the page cache. FUSE mounts must be remounted by the caller as well: their own
 * caches (dfnode's decompressed-block memory cache, squashfuse's block cache) live in user space.
 */
export async function dropPageCache(backing: string[]): Promise<DropMethod> {
  await run('sync', []);
  try {
    await writeFile('/proc/sys/vm/drop_caches', '3\n');
    return 'drop_caches';
  } catch {
    // containers and some VMs refuse it
  }
  try {
    if (backing.length) await run('python3', ['-c', FADVISE, ...backing]);
    return 'fadvise';
  } catch {
    return 'none';
  }
}

export function describeDrop(m: DropMethod): string {
  switch (m) {
    case 'drop_caches':
      return 'dropped (sync; echo 3 > /proc/sys/vm/drop_caches) and FUSE filesystems remounted before each cold measurement';
    case 'fadvise':
      return (
        'drop_caches refused: backing files evicted with posix_fadvise(DONTNEED) and FUSE filesystems remounted ' +
        'before each cold measurement (dentries/inodes of the plain directory stay cached)'
      );
    case 'none':
      return 'NOT dropped (drop_caches refused, python3 missing): FUSE filesystems remounted only; backing files warm';
  }
}
