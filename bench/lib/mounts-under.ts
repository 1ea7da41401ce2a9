// Mounts a benchmark made under its scratch directory, found from
// /proc/self/mountinfo and detached deepest first, so that nothing is left
// mounted even when a child died without unmounting.
import { resolve, sep } from 'node:path';
import { lazyUnmount, lazyUnmountSync, readMountInfo } from '../../src/fuse/mounts.js';

function under(dir: string): string[] {
  const root = resolve(dir);
  return readMountInfo()
    .map((m) => m.mountpoint)
    .filter((mp) => mp === root || mp.startsWith(root + sep))
    .sort((a, b) => b.length - a.length);
}

export async function unmountUnder(dir: string): Promise<void> {
  for (const mp of under(dir)) await lazyUnmount(mp).catch(() => undefined);
}

/** For 'exit' handlers: aborts FUSE connections and detaches, synchronously. */
export function unmountUnderSync(dir: string): void {
  for (const mp of under(dir)) lazyUnmountSync(mp);
}
