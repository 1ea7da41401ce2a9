import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { DirLock } from '../cache/dir-lock.js';
import { Labels } from '../containerd/labels.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { compileFilters } from './filters.js';
import { MetadataStore } from './metadata-store.js';
import type { MetadataTransaction } from './metadata-transaction.js';
import type { RemoteLayers } from './remote-layers.js';
import { RemoteMountTable } from './remote-mounts.js';
import { diskUsage, SnapshotDirs } from './snapshot-dirs.js';
import {
  infoOf,
  Kind,
  type Mount,
  type RemoteLayerRecord,
  type SnapshotInfo,
  type SnapshotRecord,
  type Usage,
} from './types.js';

export interface SnapshotterOptions {
  /** <root>/metadata.json and <root>/snapshots/<id>/{fs,work}. */
  root: string;
  /** Lazy DFB layers; without it every snapshot is a plain overlay snapshot. */
  remote?: RemoteLayers;
  logger?: Logger;
  /** How long a successful check of a remote layer is trusted (default 2000 ms). */
  checkTtlMs?: number;
  now?: () => number;
}

/** Bottom first: the root layer, then the ones above it. */
const bottomFirst = (parents: SnapshotRecord[]): SnapshotRecord[] => [...parents].reverse();

const targetExists = (tx: MetadataTransaction, target: string): void => {
  const existing = tx.lookup(target);
  if (existing?.kind === Kind.Committed)
    throw new DfError('ALREADY_EXISTS', `target snapshot ${target} already exists`, {
      details: { remote: !!existing.remote },
    });
};

/** How a remote layer's snapshot is committed: Prepare's labels plus the layer's digest, and the layer. */
const remoteCommit = (labels: Record<string, string>, layer: RemoteLayerRecord) => ({
  labels: { ...labels, [Labels.dfbLayer]: layer.digest },
  remote: layer,
});

/** Prepare's answer for a remote layer that is there now (committed under `target`). */
const remoteExists = (target: string, layer: RemoteLayerRecord): DfError =>
  new DfError('ALREADY_EXISTS', `target snapshot ${target} already exists (remote layer ${layer.digest})`, {
    details: { remote: true },
  });

/**
 * containerd's overlay snapshotter semantics, plus remote (lazily mounted DFB) layers. The rules are the
 * metadata store's; this class makes directories (SnapshotDirs), mounts remote layers (RemoteMountTable) and
 * answers the mounts containerd asks for:
 *  - active, no parent: rw bind of fs;      view, no parent: ro bind of fs (empty)
 *  - active with parents: overlay lowerdir=<parents' fs, nearest first>,upperdir=fs,workdir=work
 *  - view with one parent: ro bind of the parent's fs; view with several: overlay with lowerdir only.
 *
 * Every operation is one store transaction (one at a time); only the mount of a remote Prepare runs outside:
 * until a mount has succeeded here, between the transaction that records its active snapshot and the one
 * that commits it (a failure then leaves the layer to containerd); after that, in the background once the
 * snapshot is committed. Mounting a dead remote layer again (Mounts, Prepare/View on top of it) runs
 * inside: it is rare, and the snapshot being used must not be removed meanwhile.
 */
export class Snapshotter {
  readonly root: string;
  private readonly store: MetadataStore;
  private readonly dirs: SnapshotDirs;
  private readonly remoteMounts: RemoteMountTable;
  private readonly remote?: RemoteLayers;
  private readonly log: Logger;
  /** Remote Prepares in flight, by target name: a second Prepare of the same target waits for the first. */
  private readonly inflight = new Map<string, Promise<void>>();
  /** Keys of the active snapshots of remote Prepares in flight (not abandoned: Cleanup leaves them). */
  private readonly preparing = new Set<string>();
  private readonly overlayIndexOff = existsSync('/sys/module/overlay/parameters/index');
  /** The probe mount started by start (see probe). */
  private probing?: Promise<void>;
  /** One snapshotter per root: a second one would hand out the same ids and remove the first one's dirs. */
  private lock?: DirLock;

  constructor(opts: SnapshotterOptions) {
    this.root = resolve(opts.root);
    this.log = opts.logger ?? silentLogger;
    this.store = new MetadataStore(`${this.root}/metadata.json`);
    this.dirs = new SnapshotDirs(this.root, this.log);
    this.remote = opts.remote;
    this.remoteMounts = new RemoteMountTable({
      remote: opts.remote,
      mountpointOf: (id) => this.dirs.fsOf(id),
      clearMountpoint: (mountpoint) => this.dirs.unmountUnder(mountpoint),
      checkTtlMs: opts.checkTtlMs ?? 2000,
      now: opts.now ?? Date.now,
      logger: this.log,
    });
  }

  /**
   * Locks the root (a second snapshotter on it is refused, naming the holder's pid), loads the metadata,
   * removes what remote Prepares interrupted by a crash left, adopts the remote layers
   * whose mounts outlived the previous process (served by the FUSE manager), unmounts everything else a
   * previous process left mounted under the root, removes orphan directories and mounts the remaining remote
   * snapshots again (their FUSE mounts died with their server).
   */
  async start(): Promise<void> {
    await this.dirs.init();
    this.lock = await DirLock.acquire(this.root, process.pid, { what: 'snapshotter root' });
    try {
      await this.startLocked();
    } catch (err) {
      await this.lock.release();
      throw err;
    }
    this.probing = this.probe();
  }

  /**
   * Until a mount has worked, a remote Prepare mounts before it answers (so that containerd can unpack a
   * layer that cannot be mounted); a probe mount at start proves mounts work before the first pull, so
   * that even its first layer mounts in the background. A failed probe is logged and changes nothing.
   */
  private async probe(): Promise<void> {
    if (!this.remote?.probe || this.remoteMounts.proven) return;
    try {
      await this.remote.probe(`${this.root}/probe`);
      this.remoteMounts.proved();
    } catch (err) {
      this.log.warn(
        { err },
        'snapshotter: a probe FUSE mount failed; remote layers are mounted before Prepare answers',
      );
    }
  }

  private async startLocked(): Promise<void> {
    await this.store.load();
    await this.removeAbandoned();
    // Parents before children, so that each remote layer gets the TOCs of the layers below.
    const remotes = await this.store.withTransaction(false, (tx) => {
      const found: Array<{ snapshot: SnapshotRecord; below: SnapshotRecord[] }> = [];
      tx.walk((snapshot) => {
        if (snapshot.remote) found.push({ snapshot, below: bottomFirst(tx.parents(snapshot.name)) });
      });
      return found.sort((a, b) => a.below.length - b.below.length);
    });
    let adopted = 0;
    for (const { snapshot } of remotes) if (await this.remoteMounts.adopt(snapshot)) adopted++;
    await this.dirs.unmountUnder(this.root, this.remoteMounts.mountpoints());
    await this.store.withTransaction(false, (tx) => this.dirs.removeOrphans(tx.ids()));
    for (const { snapshot, below } of remotes) {
      if (this.remoteMounts.has(snapshot.id)) continue;
      await this.remoteMounts
        .mount(snapshot, below)
        .catch((err) =>
          this.log.error(
            { err, snapshot: snapshot.name, layer: snapshot.remote?.digest },
            'remote snapshot: mount failed; retried on use',
          ),
        );
    }
    const snapshots = await this.store.withTransaction(false, (tx) => tx.ids().size);
    this.log.info({ root: this.root, snapshots, remote: remotes.length, adopted }, 'snapshotter started');
  }

  /**
   * Graceful stop: unmounts the remote layers this process serves. Persistent ones (FUSE manager) stay
   * mounted: running containers keep using them and the next snapshotter adopts them.
   */
  async close(): Promise<void> {
    await this.probing;
    try {
      await this.store.withTransaction(false, () => this.remoteMounts.close());
    } finally {
      await this.lock?.release();
    }
  }

  /**
   * Removes the active snapshots of remote Prepares that no Prepare in flight owns (a crash between recording
   * one and committing it), with the layer a long-lived server may still serve for them. Their directories
   * are orphans afterwards.
   */
  private async removeAbandoned(): Promise<SnapshotRecord[]> {
    const abandoned = await this.store.withTransaction(true, (tx) => {
      const found: SnapshotRecord[] = [];
      tx.walk((snapshot) => {
        if (snapshot.kind === Kind.Active && snapshot.remote && !this.preparing.has(snapshot.name))
          found.push(snapshot);
      });
      for (const snapshot of found) tx.remove(snapshot.name);
      return found;
    });
    for (const snapshot of abandoned) {
      if (await this.remoteMounts.adopt(snapshot)) await this.remoteMounts.release(snapshot.id);
    }
    if (abandoned.length)
      this.log.warn(
        { keys: abandoned.map((snapshot) => snapshot.name) },
        'snapshotter: removed remote snapshots an interrupted Prepare left',
      );
    return abandoned;
  }

  // --------------------------------------------------------------------------------- operations

  async prepare(
    key: string,
    parent: string,
    labels: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<Mount[]> {
    const target = labels[Labels.snapshotRef];
    if (target && this.remote) await this.prepareRemote(key, parent, target, labels, signal);
    return this.create(Kind.Active, key, parent, labels, signal);
  }

  view(key: string, parent: string, labels: Record<string, string>, signal?: AbortSignal): Promise<Mount[]> {
    return this.create(Kind.View, key, parent, labels, signal);
  }

  private async create(
    kind: Kind,
    key: string,
    parent: string,
    labels: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<Mount[]> {
    let made: string | undefined;
    try {
      return await this.store.withTransaction(true, async (tx) => {
        const { snapshot, parents } = tx.createSnapshot(kind, key, parent, labels);
        await this.remoteMounts.ensureLive(bottomFirst(parents), signal);
        await this.dirs.create(snapshot.id, { work: kind === Kind.Active });
        made = snapshot.id;
        return this.mountsOf(snapshot, parents);
      });
    } catch (err) {
      // The record was not written: its directory would be an orphan.
      if (made) await this.dirs.remove(made).catch(() => undefined);
      throw err;
    }
  }

  /**
   * containerd's remote snapshot contract: when the layer can be provided without unpacking, commit it
   * under `target` and answer ALREADY_EXISTS. Returns normally when containerd must fill the snapshot.
   *
   * The active snapshot `key` is recorded (with the layer) before anything is mounted, then the layer is
   * mounted on its directory and the snapshot committed as `target`. A failure in between removes both; a
   * crash in between leaves a record that start and Cleanup remove.
   */
  private async prepareRemote(
    key: string,
    parent: string,
    target: string,
    labels: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<void> {
    for (let pending = this.inflight.get(target); pending; pending = this.inflight.get(target)) await pending;
    let done!: () => void;
    this.inflight.set(target, new Promise<void>((resolveDone) => (done = resolveDone)));
    try {
      // Fail early (before any network work) on errors the normal path would report too.
      await this.store.withTransaction(false, (tx) => {
        targetExists(tx, target);
        tx.checkCreate(Kind.Active, key, parent, labels);
      });
      const layer = await this.remote!.resolve(labels, signal).catch((err) => {
        this.log.warn(
          { err, target, image: labels[Labels.criImageRef] ?? labels[Labels.remoteImageRef] },
          'remote snapshot: cannot resolve the layer; containerd will unpack it',
        );
        return undefined;
      });
      if (layer) await this.mountRemote(key, parent, target, labels, layer, signal);
    } finally {
      this.inflight.delete(target);
      done();
    }
  }

  private async mountRemote(
    key: string,
    parent: string,
    target: string,
    labels: Record<string, string>,
    layer: RemoteLayerRecord,
    signal?: AbortSignal,
  ): Promise<void> {
    if (this.remoteMounts.proven) return this.commitRemote(key, parent, target, labels, layer);
    const { snapshot, parents } = await this.recordRemote(key, parent, target, labels, layer, false);
    try {
      try {
        await this.remoteMounts.mount(snapshot, bottomFirst(parents), signal);
      } catch (err) {
        await this.undoRemote(snapshot);
        // containerd gave up on this Prepare: an active snapshot for it to fill would never be used.
        if (signal?.aborted) throw DfError.from(err, `remote snapshot ${target}`);
        this.log.warn(
          { err, target, layer: layer.digest },
          'remote snapshot: mount failed; containerd will unpack the layer',
        );
        return;
      }
      try {
        await this.store.withTransaction(true, (tx) =>
          tx.commitActive(key, target, remoteCommit(labels, layer)),
        );
      } catch (err) {
        await this.undoRemote(snapshot);
        throw err;
      }
    } finally {
      this.preparing.delete(key);
    }
    this.log.info({ target, layer: layer.digest, image: layer.ref }, 'remote snapshot: layer mounted lazily');
    throw remoteExists(target, layer);
  }

  /**
   * A remote Prepare once mounts are known to work here: the snapshot is recorded and committed in one
   * transaction and its layer mounts in the background (RemoteMountTable.mountInBackground), so a pull's next
   * layer is prepared while this one mounts, and nothing waits for a layer no container has used, not even
   * for its TOC (the pull's warm-up reads it meanwhile). A mount that fails (a TOC that cannot be read, say)
   * is retried, and its error reported, when a container uses the layer.
   */
  private async commitRemote(
    key: string,
    parent: string,
    target: string,
    labels: Record<string, string>,
    layer: RemoteLayerRecord,
  ): Promise<never> {
    const { snapshot, parents } = await this.recordRemote(key, parent, target, labels, layer, true);
    this.remoteMounts.mountInBackground(snapshot, bottomFirst(parents));
    this.log.info(
      { target, layer: layer.digest, image: layer.ref },
      'remote snapshot: layer committed, mounting',
    );
    throw remoteExists(target, layer);
  }

  /**
   * One transaction: the active snapshot `key` of a remote Prepare, with its directory, and when `commit`,
   * that snapshot committed as `target` (else it is marked as being prepared, for Cleanup to spare). When
   * the transaction fails the directory goes again.
   */
  private async recordRemote(
    key: string,
    parent: string,
    target: string,
    labels: Record<string, string>,
    layer: RemoteLayerRecord,
    commit: boolean,
  ): Promise<{ snapshot: SnapshotRecord; parents: SnapshotRecord[] }> {
    let made: string | undefined;
    return this.store
      .withTransaction(true, async (tx) => {
        targetExists(tx, target);
        const created = tx.createSnapshot(Kind.Active, key, parent, labels, layer);
        // Before the transaction ends: Cleanup must never take it for an abandoned one.
        if (!commit) this.preparing.add(key);
        await this.dirs.create(created.snapshot.id, { work: false });
        made = created.snapshot.id;
        if (!commit) return created;
        return { ...created, snapshot: tx.commitActive(key, target, remoteCommit(labels, layer)) };
      })
      .catch(async (err: unknown) => {
        this.preparing.delete(key);
        if (made) await this.dirs.remove(made).catch(() => undefined);
        throw err;
      });
  }

  /** Undoes a remote Prepare that failed after its active snapshot was recorded: unmount, record, directory. */
  private async undoRemote(snapshot: SnapshotRecord): Promise<void> {
    try {
      await this.remoteMounts.release(snapshot.id);
      await this.store.withTransaction(true, (tx) => {
        if (tx.lookup(snapshot.name)?.id === snapshot.id) tx.remove(snapshot.name);
      });
      await this.dirs.remove(snapshot.id);
    } catch (err) {
      this.log.warn(
        { err, key: snapshot.name },
        'remote snapshot: undo failed; Cleanup removes what is left',
      );
    }
  }

  private mountsOf(snapshot: SnapshotRecord, parents: SnapshotRecord[]): Mount[] {
    if (parents.length === 0) {
      const mode = snapshot.kind === Kind.View ? 'ro' : 'rw';
      return [{ type: 'bind', source: this.dirs.fsOf(snapshot.id), options: [mode, 'rbind'] }];
    }
    if (snapshot.kind === Kind.View && parents.length === 1)
      return [{ type: 'bind', source: this.dirs.fsOf(parents[0]!.id), options: ['ro', 'rbind'] }];
    const options: string[] = [];
    if (this.overlayIndexOff) options.push('index=off');
    if (snapshot.kind === Kind.Active)
      options.push(`workdir=${this.dirs.workOf(snapshot.id)}`, `upperdir=${this.dirs.fsOf(snapshot.id)}`);
    options.push(`lowerdir=${parents.map((lower) => this.dirs.fsOf(lower.id)).join(':')}`);
    return [{ type: 'overlay', source: 'overlay', options }];
  }

  /** Mounts of an active or view snapshot; dead remote layers below it are mounted again first. */
  mounts(key: string, signal?: AbortSignal): Promise<Mount[]> {
    return this.store.withTransaction(false, async (tx) => {
      const { snapshot, parents } = tx.getSnapshot(key);
      await this.remoteMounts.ensureLive(bottomFirst(parents), signal);
      return this.mountsOf(snapshot, parents);
    });
  }

  async commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    const id = await this.store.withTransaction(true, async (tx) => {
      const active = tx.getInfo(key);
      // Only an active snapshot can be committed (commitActive says so): measure nothing else.
      const usage = active.kind === Kind.Active ? await diskUsage(this.dirs.fsOf(active.id)) : undefined;
      tx.commitActive(key, name, { labels, usage });
      return active.id;
    });
    await this.dirs.removeWork(id);
  }

  async remove(key: string): Promise<void> {
    const removed = await this.store.withTransaction(true, (tx) => tx.remove(key));
    // The record is gone: a failure here leaves an orphan directory that start/Cleanup remove.
    await this.remoteMounts.release(removed.id);
    await this.dirs
      .remove(removed.id)
      .catch((err) => this.log.warn({ err, key }, 'snapshot directory not removed; Cleanup retries'));
  }

  stat(key: string): Promise<SnapshotInfo> {
    return this.store.withTransaction(false, (tx) => infoOf(tx.getInfo(key)));
  }

  /** Updates labels: paths 'labels' (replace all) or 'labels.<key>' (set, or delete when absent in info). */
  update(info: SnapshotInfo, paths: string[]): Promise<SnapshotInfo> {
    return this.store.withTransaction(true, (tx) => tx.updateInfo(info, paths));
  }

  async usage(key: string): Promise<Usage> {
    const snapshot = await this.store.withTransaction(false, (tx) => tx.getInfo(key));
    if (snapshot.remote) return { size: snapshot.remote.size, inodes: 0 };
    if (snapshot.kind === Kind.Committed && snapshot.usage) return snapshot.usage;
    return diskUsage(this.dirs.fsOf(snapshot.id));
  }

  async walk(filters: string[]): Promise<SnapshotInfo[]> {
    const match = compileFilters(filters);
    return this.store.withTransaction(false, (tx) => {
      const infos: SnapshotInfo[] = [];
      tx.walk((snapshot) => {
        const info = infoOf(snapshot);
        if (match(info)) infos.push(info);
      });
      return infos;
    });
  }

  /**
   * Removes what no snapshot owns: active snapshots of interrupted remote Prepares, and directories left by
   * crashes or failed removals. Returns the directory ids removed.
   */
  async cleanup(): Promise<string[]> {
    await this.removeAbandoned();
    return this.store.withTransaction(false, (tx) => this.dirs.removeOrphans(tx.ids()));
  }
}
