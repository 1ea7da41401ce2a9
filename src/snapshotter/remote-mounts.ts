import { mkdir } from 'node:fs/promises';
import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import type { LowerLayer, RemoteLayers, RemoteMount } from './remote-layers.js';
import type { SnapshotRecord } from './types.js';

export interface RemoteMountTableOptions {
  /** Without it, snapshots of remote layers (from an earlier configuration) cannot be mounted. */
  remote?: RemoteLayers;
  /** Mount point of a snapshot's layer (its fs/ directory). */
  mountpointOf(id: string): string;
  /** Detaches whatever is left mounted at a mount point (a dead FUSE mount) before mounting again. */
  clearMountpoint(mountpoint: string): Promise<void>;
  /** A successful check is trusted this long, so a burst of Mounts calls checks each layer once. */
  checkTtlMs: number;
  now: () => number;
  logger: Logger;
}

interface LiveMount {
  mount: RemoteMount;
  /** When check() last answered true (or the layer was mounted). */
  checkedAt: number;
}

/**
 * The remote layers this snapshotter has mounted, by snapshot id, and the check that they still answer: a
 * dead one (ENOTCONN, unmounted behind our back) is mounted again once, with its lower layers, when a
 * container is about to use it; when that fails the caller gets an UNAVAILABLE error naming the layer.
 *
 * Chains are given bottom first (the layer, then the ones above it), so lower TOCs are known when an upper
 * layer is mounted. Callers serialize calls (the metadata store's transaction lock), except `mount` of a
 * snapshot no one else can see yet; a background mount (mountInBackground) is waited for by every call that
 * touches its snapshot or a layer above it.
 */
export class RemoteMountTable {
  private readonly live = new Map<string, LiveMount>();
  /** Mounts started by mountInBackground and not settled yet, by snapshot id. */
  private readonly pending = new Map<string, Promise<void>>();
  /** Whether a mount has succeeded here: until one has, remote Prepares mount before they answer. */
  private mountedOnce = false;

  constructor(private readonly opts: RemoteMountTableOptions) {}

  has(id: string): boolean {
    return this.live.has(id);
  }

  /** Mount points of every layer mounted here. */
  mountpoints(): Set<string> {
    return new Set([...this.live.keys()].map((id) => this.opts.mountpointOf(id)));
  }

  /** The layers of `chain` (bottom first) with their TOCs when mounted here; undefined unless all are remote. */
  lowerLayers(chain: SnapshotRecord[]): LowerLayer[] | undefined {
    if (!chain.length || chain.some((snapshot) => !snapshot.remote)) return undefined;
    return chain.map((snapshot) => ({ layer: snapshot.remote!, toc: this.live.get(snapshot.id)?.mount.toc }));
  }

  /** True once a mount has succeeded in this table, or a probe mount (proved), i.e. mounts work here. */
  get proven(): boolean {
    return this.mountedOnce;
  }

  /** Marks mounts as working here (a probe mount succeeded: Snapshotter.start). */
  proved(): void {
    this.mountedOnce = true;
  }

  /**
   * Starts mounting a committed snapshot's layer and returns at once: the pull goes on while the layer
   * mounts (its TOC known, a FUSE mount to make). Everything that uses the layer (ensureLive, release, the
   * mount of a layer above it, close) waits for it first. A failure is logged and the layer mounted again on
   * use, where a second failure reaches the caller.
   */
  mountInBackground(snapshot: SnapshotRecord, below: SnapshotRecord[]): void {
    const done = this.mount(snapshot, below)
      .catch((err: unknown) =>
        this.opts.logger.warn(
          { err, snapshot: snapshot.name, layer: snapshot.remote?.digest },
          'remote snapshot: mount failed; retried on use',
        ),
      )
      .finally(() => this.pending.delete(snapshot.id));
    this.pending.set(snapshot.id, done);
  }

  /** Waits for the background mounts of `chain` (all when omitted) to settle. */
  private async settle(chain?: SnapshotRecord[]): Promise<void> {
    const ids = chain ? chain.map((s) => s.id) : [...this.pending.keys()];
    for (const id of ids) await this.pending.get(id);
  }

  /** Mounts the layer of `snapshot` on its fs/ directory; `below` are its parents, bottom first. */
  async mount(snapshot: SnapshotRecord, below: SnapshotRecord[], signal?: AbortSignal): Promise<void> {
    await this.settle(below);
    const remote = this.opts.remote;
    if (!snapshot.remote) throw DfError.internal(`snapshot ${snapshot.name} is not a remote layer`);
    if (!remote)
      throw new DfError(
        'FAILED_PRECONDITION',
        `snapshot ${snapshot.name} is remote layer ${snapshot.remote.digest}, but remote layers are not enabled in this snapshotter; enable them or remove the snapshot`,
      );
    const mountpoint = this.opts.mountpointOf(snapshot.id);
    await mkdir(mountpoint, { recursive: true });
    const mount = await remote.mount(snapshot.remote, mountpoint, this.lowerLayers(below), signal);
    this.live.set(snapshot.id, { mount, checkedAt: this.opts.now() });
    this.mountedOnce = true;
  }

  /** Takes over the live mount of `snapshot` a previous process left with a server that outlived it. */
  async adopt(snapshot: SnapshotRecord): Promise<boolean> {
    const remote = this.opts.remote;
    if (!snapshot.remote || !remote?.adopt) return false;
    const mount = await remote.adopt(snapshot.remote, this.opts.mountpointOf(snapshot.id)).catch((err) => {
      this.opts.logger.warn(
        { err, snapshot: snapshot.name },
        'remote snapshot: cannot check the live mount; mounting again',
      );
      return undefined;
    });
    if (!mount) return false;
    this.live.set(snapshot.id, { mount, checkedAt: this.opts.now() });
    return true;
  }

  /**
   * Makes sure every remote layer of `chain` (bottom first) is served: each is checked (unless it was checked
   * within checkTtlMs) and one that is dead or not mounted is mounted again, once.
   */
  async ensureLive(chain: SnapshotRecord[], signal?: AbortSignal): Promise<void> {
    await this.settle(chain);
    for (const [index, snapshot] of chain.entries()) {
      if (!snapshot.remote) continue;
      const current = this.live.get(snapshot.id);
      if (current && (await this.isLive(snapshot, current))) continue;
      await this.remount(snapshot, chain.slice(0, index), current, signal);
    }
  }

  private async isLive(snapshot: SnapshotRecord, current: LiveMount): Promise<boolean> {
    const now = this.opts.now();
    if (now - current.checkedAt < this.opts.checkTtlMs) return true;
    let ok: boolean;
    try {
      ok = await current.mount.check();
    } catch (err) {
      // The server does not answer: mounting again would tear down a mount that may still serve containers.
      throw new DfError(
        'NETWORK',
        `remote layer ${snapshot.remote!.digest} (snapshot ${snapshot.name}) cannot be checked: ${(err as Error).message}; check that the process serving it (dfnode's fuse manager) runs and answers, then retry`,
        { cause: err, details: { layer: snapshot.remote!.digest, snapshot: snapshot.name } },
      );
    }
    if (ok) current.checkedAt = now;
    return ok;
  }

  private async remount(
    snapshot: SnapshotRecord,
    below: SnapshotRecord[],
    current: LiveMount | undefined,
    signal?: AbortSignal,
  ): Promise<void> {
    const layer = snapshot.remote!.digest;
    this.opts.logger.warn(
      { snapshot: snapshot.name, layer },
      current
        ? 'remote snapshot: layer mount is dead; mounting it again'
        : 'remote snapshot: mounting the layer',
    );
    if (current) await this.release(snapshot.id);
    try {
      await this.opts.clearMountpoint(this.opts.mountpointOf(snapshot.id));
      await this.mount(snapshot, below, signal);
    } catch (err) {
      const cause = DfError.from(err);
      if (cause.code === 'FAILED_PRECONDITION') throw cause;
      throw new DfError(
        'NETWORK',
        `remote layer ${layer} (snapshot ${snapshot.name}) is not mounted and mounting it again failed: ${cause.message}`,
        { cause: err, details: { layer, snapshot: snapshot.name } },
      );
    }
  }

  /** Unmounts the layer of snapshot `id` (if mounted here) and forgets it. Errors are logged. */
  async release(id: string): Promise<void> {
    await this.pending.get(id);
    const current = this.live.get(id);
    if (!current) return;
    this.live.delete(id);
    await current.mount
      .unmount()
      .catch((err) => this.opts.logger.warn({ err, id }, 'remote snapshot: unmount failed'));
  }

  /** Unmounts the layers this process serves; persistent ones (fuse manager) stay for the next process. */
  async close(): Promise<void> {
    await this.settle();
    for (const [id, current] of this.live) {
      if (current.mount.persistent) continue;
      await current.mount
        .unmount()
        .catch((err) => this.opts.logger.warn({ err, id }, 'remote snapshot: unmount failed'));
    }
    this.live.clear();
  }
}
