import { existsSync, rmSync } from 'node:fs';
import { cp, mkdir, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';

/**
 * A private copy of the build (dist/ and the native addon) under .tmp/, so that a long benchmark keeps
 * running the code it started with while others rebuild the working tree.
 */
export class BuildSnapshot {
  readonly dir: string;
  readonly dfnode: string;
  /** bin/dfnode, the package's `dfnode` command (its pull through the native client when that is built). */
  readonly dfnodeBin: string;
  readonly dfconvert: string;
  private readonly addon: string;
  private readonly snapshotAddon: string;

  constructor(
    private readonly repo: string,
    name: string,
  ) {
    this.dir = join(repo, '.tmp', `bench-${name}-${process.pid}`);
    // the bundled CLIs, what the package's bins run (npm run build makes them)
    this.dfnode = join(this.dir, 'dist', 'bundle', 'dfnode.js');
    this.dfnodeBin = join(this.dir, 'bin', 'dfnode');
    this.dfconvert = join(this.dir, 'dist', 'bundle', 'dfconvert.js');
    this.addon = join(repo, 'native', 'build', 'Release', 'dfnode_fuse.node');
    this.snapshotAddon = join(this.dir, 'native', 'build', 'Release', 'dfnode_fuse.node');
  }

  /** Whether the native FUSE addon is built. */
  get nativeAddon(): boolean {
    return existsSync(this.addon);
  }

  /**
   * Copies dist/, bin/ and, when built, the native addon (pointed to by DFNODE_FUSE_ADDON for child processes)
   * and pull client (where bin/dfnode looks for it).
   */
  async take(): Promise<void> {
    await cp(join(this.repo, 'dist'), join(this.dir, 'dist'), { recursive: true });
    await cp(join(this.repo, 'bin'), join(this.dir, 'bin'), { recursive: true });
    const client = join('native', 'build', 'Release', 'dfnode-pull');
    if (existsSync(join(this.repo, client))) {
      await mkdir(dirname(join(this.dir, client)), { recursive: true });
      await cp(join(this.repo, client), join(this.dir, client));
    }
    if (existsSync(this.addon)) {
      await mkdir(dirname(this.snapshotAddon), { recursive: true });
      await cp(this.addon, this.snapshotAddon);
      process.env.DFNODE_FUSE_ADDON = this.snapshotAddon;
    }
  }

  async remove(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }

  removeSync(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
