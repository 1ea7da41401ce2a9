import { realpath } from 'node:fs/promises';
import { isAbsolute, normalize, relative, sep } from 'node:path';
import { DfError } from '../errors.js';

/**
 * Where the FUSE manager may mount: strictly below one of the node's own directories (the snapshotter root,
 * the node state directory). Its control socket is root's, so this is defence in depth: even a request that
 * reaches it cannot mount a layer over /etc/cron.d or any other path of the host.
 */
export class MountRoots {
  private readonly roots: string[];

  constructor(roots: string[]) {
    if (!roots.length) throw DfError.invalidArgument('fuse manager: no directory to mount under');
    this.roots = roots.map((r) => normalize(r));
  }

  /**
   * Checks `mountpoint`: an absolute, normalized path (no `..`, no `//`) whose real path (symlinks resolved)
   * is strictly below the real path of a root. INVALID_ARGUMENT for a malformed or missing path, FORBIDDEN
   * for one outside the node's directories.
   */
  async check(mountpoint: string): Promise<void> {
    if (!isAbsolute(mountpoint) || normalize(mountpoint) !== mountpoint || mountpoint.includes('\0'))
      throw DfError.invalidArgument(
        `fuse manager: mountpoint ${JSON.stringify(mountpoint)} is not a normalized absolute path`,
      );
    const real = await realpath(mountpoint).catch((err: NodeJS.ErrnoException) => {
      throw DfError.invalidArgument(`fuse manager: mountpoint ${mountpoint}: ${err.code ?? err.message}`);
    });
    const roots = await this.realRoots();
    const inside = roots.some((root) => {
      const rel = relative(root, real);
      return rel !== '' && !rel.startsWith(`..${sep}`) && rel !== '..' && !isAbsolute(rel);
    });
    if (!inside)
      throw new DfError(
        'FORBIDDEN',
        `fuse manager: mountpoint ${mountpoint}${real === mountpoint ? '' : ` (really ${real})`} is outside ` +
          `the node's directories (${this.roots.join(', ')}); the manager mounts layers only there`,
        { details: { mountpoint, real } },
      );
  }

  private realRoots(): Promise<string[]> {
    // Resolved on each check (a root may be created after the manager starts); one that does not exist
    // cannot hold a mountpoint and is kept as configured.
    return Promise.all(this.roots.map((r) => realpath(r).catch(() => r)));
  }
}
