import { lstat, mkdir, opendir, readdir, rm } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { DfError } from '../errors.js';
import { abortConnection, isFuseType, lazyUnmount, readMountInfo } from '../fuse/mounts.js';
import type { Logger } from '../log.js';
import type { Usage } from './types.js';

/**
 * The snapshot directories under <root>/snapshots: <id>/fs (the upper directory, or the mount point of a
 * remote layer) and <id>/work (the overlay workdir, active snapshots only). Removal never goes through a
 * mount: whatever is mounted below a directory is detached first.
 */
export class SnapshotDirs {
  readonly snapshotsDir: string;

  constructor(
    readonly root: string,
    private readonly log: Logger,
  ) {
    this.snapshotsDir = join(root, 'snapshots');
  }

  dirOf(id: string): string {
    return join(this.snapshotsDir, id);
  }

  fsOf(id: string): string {
    return join(this.snapshotsDir, id, 'fs');
  }

  workOf(id: string): string {
    return join(this.snapshotsDir, id, 'work');
  }

  init(): Promise<string | undefined> {
    return mkdir(this.snapshotsDir, { recursive: true });
  }

  /**
   * A fresh fs/ (and work/ with `work`) for snapshot `id`. What a failed metadata write left there is removed
   * (nothing is ever mounted in the directory of an id that was not recorded).
   */
  async create(id: string, opts: { work: boolean }): Promise<void> {
    try {
      await rm(this.dirOf(id), { recursive: true, force: true });
      await mkdir(this.fsOf(id), { recursive: true, mode: 0o755 });
      if (opts.work) await mkdir(this.workOf(id), { mode: 0o700 });
    } catch (err) {
      await rm(this.dirOf(id), { recursive: true, force: true }).catch(() => undefined);
      throw DfError.from(err, `create snapshot directory ${this.dirOf(id)}`);
    }
  }

  /** The work directory is only needed while the snapshot is active. */
  removeWork(id: string): Promise<void> {
    return rm(this.workOf(id), { recursive: true, force: true }).catch(() => undefined);
  }

  /** Removes the directory of snapshot `id`, detaching what is mounted below it first. */
  async remove(id: string): Promise<void> {
    await this.unmountUnder(this.dirOf(id));
    await rm(this.dirOf(id), { recursive: true, force: true });
  }

  /** Removes the directories whose id is not in `known` (left by crashes or failed removals). */
  async removeOrphans(known: ReadonlySet<string>): Promise<string[]> {
    const removed: string[] = [];
    for (const id of await readdir(this.snapshotsDir)) {
      if (known.has(id)) continue;
      await this.remove(id).then(
        () => removed.push(id),
        (err) => this.log.warn({ err, dir: id }, 'snapshotter: orphan directory could not be removed'),
      );
    }
    if (removed.length) this.log.info({ removed }, 'snapshotter: removed orphan snapshot directories');
    return removed;
  }

  /** Lazily detaches every mount at or below `dir` except `keep`, deepest first (FUSE connections aborted first). */
  async unmountUnder(dir: string, keep: ReadonlySet<string> = new Set()): Promise<void> {
    const prefix = dir.endsWith(sep) ? dir : dir + sep;
    const stale = readMountInfo()
      .filter(
        (mount) =>
          (mount.mountpoint === dir || mount.mountpoint.startsWith(prefix)) && !keep.has(mount.mountpoint),
      )
      .sort((a, b) => b.mountpoint.length - a.mountpoint.length);
    for (const mount of stale) {
      if (isFuseType(mount.fstype)) abortConnection(mount.mountpoint);
      await lazyUnmount(mount.mountpoint).then(
        () => this.log.info({ mountpoint: mount.mountpoint }, 'snapshotter: removed a stale mount'),
        (err) =>
          this.log.warn(
            { err, mountpoint: mount.mountpoint },
            'snapshotter: stale mount could not be removed',
          ),
      );
    }
  }
}

/** Size (allocated blocks) and inode count of a local tree; hard links counted once. */
export async function diskUsage(dir: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  const visit = async (path: string): Promise<void> => {
    const st = await lstat(path, { bigint: true });
    const inode = `${st.dev}:${st.ino}`;
    if (!seen.has(inode)) {
      seen.add(inode);
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) {
      const entries = await opendir(path);
      for await (const entry of entries) await visit(join(path, entry.name));
    }
  };
  try {
    await visit(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw DfError.from(err, `usage of ${dir}`);
  }
  return { size, inodes: seen.size };
}
