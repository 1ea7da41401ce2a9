import { existsSync } from 'node:fs';
import { lstat, mkdir, opendir, readdir, rm } from 'node:fs/promises';
import { join, resolve, sep } from 'node:path';
import { DfError } from '../errors.js';
import { abortConnection, isFuseType, lazyUnmount, readMountInfo } from '../fuse/mounts.js';
import { silentLogger, type Logger } from '../log.js';
import { compileFilters } from './filters.js';
import { MetadataStore } from './metadata-store.js';
import { Labels, type LowerLayer, type RemoteLayers, type RemoteMount } from './remote-layers.js';
import { infoOf, Kind, type Mount, type SnapshotInfo, type SnapshotRecord, type Usage } from './types.js';

export interface SnapshotterOptions {
  /** <root>/metadata.json and <root>/snapshots/<id>/{fs,work}. */
  root: string;
  /** Lazy DFB layers; without it every snapshot is a plain overlay snapshot. */
  remote?: RemoteLayers;
  logger?: Logger;
}

const MAX_LABEL_BYTES = 4096;

/**
 * containerd's overlay snapshotter semantics, plus remote (lazily mounted DFB) layers.
 *
 * Snapshot directories: <root>/snapshots/<id>/fs (the upper directory, or the mount point of a remote
 * layer) and <id>/work (overlay workdir, active snapshots only). Mounts returned to containerd:
 *  - active, no parent: rw bind of fs;      view, no parent: ro bind of fs (empty)
 *  - active with parents: overlay lowerdir=<parents' fs, nearest first>,upperdir=fs,workdir=work
 *  - view with one parent: ro bind of the parent's fs; view with several: overlay with lowerdir only.
 *
 * Operations are serialized by one lock; only the network part of a remote Prepare runs outside it.
 */
export class Snapshotter {
  readonly root: string;
  private readonly store: MetadataStore;
  private readonly remote?: RemoteLayers;
  private readonly log: Logger;
  private lockChain: Promise<unknown> = Promise.resolve();
  /** Live mounts of remote snapshots, by snapshot id. */
  private readonly remoteMounts = new Map<string, RemoteMount>();
  /** Remote Prepares in flight, by target name: a second Prepare of the same target waits for the first. */
  private readonly inflight = new Map<string, Promise<void>>();
  private readonly overlayIndexOff = existsSync('/sys/module/overlay/parameters/index');

  constructor(opts: SnapshotterOptions) {
    this.root = resolve(opts.root);
    this.store = new MetadataStore(join(this.root, 'metadata.json'));
    this.remote = opts.remote;
    this.log = opts.logger ?? silentLogger;
  }

  private get snapshotsDir(): string {
    return join(this.root, 'snapshots');
  }

  private dirOf(id: string): string {
    return join(this.snapshotsDir, id);
  }

  private fsOf(id: string): string {
    return join(this.snapshotsDir, id, 'fs');
  }

  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.lockChain.then(fn, fn);
    this.lockChain = p.catch(() => undefined);
    return p;
  }

  /**
   * Loads the metadata, adopts the remote layers whose mounts outlived the previous process (served by the
   * FUSE manager), unmounts everything else a previous process left mounted under the root, removes orphan
   * directories and mounts the remaining remote snapshots again (their FUSE mounts died with their server).
   */
  async start(): Promise<void> {
    await mkdir(this.snapshotsDir, { recursive: true });
    await this.store.load();
    // Parents before children, so that each remote layer gets the TOCs of the layers below.
    const remotes = this.store.all().filter((s) => s.remote);
    remotes.sort((a, b) => this.store.parents(a.name).length - this.store.parents(b.name).length);
    const adopted = new Set<string>();
    if (this.remote?.adopt) {
      for (const s of remotes) {
        const m = await this.remote.adopt(s.remote!, this.fsOf(s.id)).catch((err: unknown) => {
          this.log.warn(
            { err, snapshot: s.name },
            'remote snapshot: cannot check the live mount; mounting again',
          );
          return undefined;
        });
        if (!m) continue;
        this.remoteMounts.set(s.id, m);
        adopted.add(this.fsOf(s.id));
      }
    }
    await this.unmountUnder(this.root, adopted);
    await this.removeOrphans();
    for (const s of remotes) {
      try {
        await this.ensureRemoteMounted(s);
      } catch (err) {
        this.log.error(
          { err, snapshot: s.name, layer: s.remote?.digest },
          'remote snapshot: mount failed; retried on use',
        );
      }
    }
    this.log.info(
      { root: this.root, snapshots: this.store.all().length, remote: remotes.length, adopted: adopted.size },
      'snapshotter started',
    );
  }

  /**
   * Graceful stop: unmounts the remote layers this process serves. Persistent ones (FUSE manager) stay
   * mounted: running containers keep using them and the next snapshotter adopts them.
   */
  async close(): Promise<void> {
    await this.locked(async () => {
      for (const [id, m] of this.remoteMounts) {
        if (m.persistent) continue;
        await m.unmount().catch((err) => this.log.warn({ err, id }, 'remote snapshot: unmount failed'));
      }
      this.remoteMounts.clear();
    });
  }

  /** Lazily detaches every mount at or below `dir` except `keep`, deepest first (FUSE connections aborted first). */
  private async unmountUnder(dir: string, keep: ReadonlySet<string> = new Set()): Promise<void> {
    const prefix = dir.endsWith(sep) ? dir : dir + sep;
    const stale = readMountInfo()
      .filter((m) => (m.mountpoint === dir || m.mountpoint.startsWith(prefix)) && !keep.has(m.mountpoint))
      .sort((a, b) => b.mountpoint.length - a.mountpoint.length);
    for (const m of stale) {
      if (isFuseType(m.fstype)) abortConnection(m.mountpoint);
      await lazyUnmount(m.mountpoint).then(
        () => this.log.info({ mountpoint: m.mountpoint }, 'snapshotter: removed a stale mount'),
        (err) =>
          this.log.warn({ err, mountpoint: m.mountpoint }, 'snapshotter: stale mount could not be removed'),
      );
    }
  }

  /** Removes a snapshot directory, never through a mount. */
  private async removeDir(id: string): Promise<void> {
    const dir = this.dirOf(id);
    await this.unmountUnder(dir);
    await rm(dir, { recursive: true, force: true });
  }

  private async removeOrphans(): Promise<string[]> {
    const known = this.store.ids();
    const removed: string[] = [];
    for (const name of await readdir(this.snapshotsDir)) {
      if (known.has(name)) continue;
      await this.removeDir(name).then(
        () => removed.push(name),
        (err) => this.log.warn({ err, dir: name }, 'snapshotter: orphan directory could not be removed'),
      );
    }
    if (removed.length) this.log.info({ removed }, 'snapshotter: removed orphan snapshot directories');
    return removed;
  }

  // ------------------------------------------------------------------------------------- checks

  private static checkKey(key: string, what = 'key'): void {
    if (!key) throw DfError.invalidArgument(`snapshot ${what} must not be empty`);
  }

  private static checkLabels(labels: Record<string, string>): void {
    for (const [k, v] of Object.entries(labels)) {
      if (!k) throw DfError.invalidArgument('label keys must not be empty');
      if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_BYTES)
        throw DfError.invalidArgument(`label ${k} is longer than ${MAX_LABEL_BYTES} bytes (key + value)`);
    }
  }

  private mustGet(key: string): SnapshotRecord {
    const s = this.store.get(key);
    if (!s) throw DfError.notFound(`snapshot ${key} does not exist`);
    return s;
  }

  private checkNew(key: string, parent: string): void {
    if (this.store.get(key)) throw new DfError('ALREADY_EXISTS', `snapshot ${key} already exists`);
    if (parent) {
      const p = this.store.get(parent);
      if (!p) throw DfError.notFound(`parent snapshot ${parent} does not exist`);
      if (p.kind !== Kind.Committed)
        throw new DfError(
          'FAILED_PRECONDITION',
          `parent snapshot ${parent} is not committed (commit it first)`,
        );
    }
  }

  // --------------------------------------------------------------------------------- operations

  async prepare(
    key: string,
    parent: string,
    labels: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<Mount[]> {
    Snapshotter.checkKey(key);
    Snapshotter.checkLabels(labels);
    const target = labels[Labels.targetRef];
    if (target && this.remote) {
      await this.tryRemote(key, parent, target, labels, signal);
    }
    return this.create(Kind.Active, key, parent, labels);
  }

  async view(key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    Snapshotter.checkKey(key);
    Snapshotter.checkLabels(labels);
    return this.create(Kind.View, key, parent, labels);
  }

  private create(kind: Kind, key: string, parent: string, labels: Record<string, string>): Promise<Mount[]> {
    return this.locked(async () => {
      this.checkNew(key, parent);
      const id = this.store.allocateId();
      const dir = this.dirOf(id);
      await rm(dir, { recursive: true, force: true });
      await mkdir(join(dir, 'fs'), { recursive: true, mode: 0o755 });
      if (kind === Kind.Active) await mkdir(join(dir, 'work'), { mode: 0o700 });
      const now = Date.now();
      const rec: SnapshotRecord = {
        id,
        name: key,
        parent,
        kind,
        labels: { ...labels },
        created: now,
        updated: now,
      };
      try {
        await this.store.update((d) => void d.push(rec));
      } catch (err) {
        await rm(dir, { recursive: true, force: true }).catch(() => undefined);
        throw err;
      }
      return this.mountsOf(this.mustGet(key));
    });
  }

  /**
   * containerd's remote snapshot contract: when the layer can be provided without unpacking, commit it
   * under `target` and answer ALREADY_EXISTS. Returns normally when containerd must fill the snapshot.
   */
  private async tryRemote(
    key: string,
    parent: string,
    target: string,
    labels: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<void> {
    const pending = this.inflight.get(target);
    if (pending) await pending.catch(() => undefined);
    const exists = () => {
      const t = this.store.get(target);
      if (t && t.kind === Kind.Committed)
        throw new DfError('ALREADY_EXISTS', `target snapshot ${target} already exists`, {
          details: { remote: !!t.remote },
        });
    };
    exists();
    // Fail early (before any network work) on errors the normal path would report too.
    await this.locked(async () => this.checkNew(key, parent));
    let done!: () => void;
    const mine = new Promise<void>((r) => (done = r));
    this.inflight.set(target, mine);
    try {
      let layer;
      try {
        layer = await this.remote!.resolve(labels, signal);
      } catch (err) {
        this.log.warn(
          { err, target, image: labels[Labels.imageRef] },
          'remote snapshot: cannot resolve the layer; containerd will unpack it',
        );
        return;
      }
      if (!layer) return;
      const id = await this.locked(async () => {
        const i = this.store.allocateId();
        await rm(this.dirOf(i), { recursive: true, force: true });
        await mkdir(this.fsOf(i), { recursive: true, mode: 0o755 });
        return i;
      });
      let mount: RemoteMount;
      try {
        mount = await this.remote!.mount(layer, this.fsOf(id), this.lowerLayers(parent), signal);
      } catch (err) {
        await this.locked(() => this.removeDir(id)).catch(() => undefined);
        this.log.warn(
          { err, target, layer: layer.digest },
          'remote snapshot: mount failed; containerd will unpack the layer',
        );
        return;
      }
      await this.locked(async () => {
        try {
          exists();
          if (parent) this.checkNew(target, parent);
          const now = Date.now();
          const rec: SnapshotRecord = {
            id,
            name: target,
            parent,
            kind: Kind.Committed,
            labels: { ...labels, [Labels.dfbLayer]: layer.digest },
            created: now,
            updated: now,
            remote: layer,
          };
          await this.store.update((d) => void d.push(rec));
          this.remoteMounts.set(id, mount);
        } catch (err) {
          await mount.unmount().catch(() => undefined);
          await this.removeDir(id).catch(() => undefined);
          throw err;
        }
      });
      this.log.info(
        { target, layer: layer.digest, image: layer.ref },
        'remote snapshot: layer mounted lazily',
      );
      throw new DfError(
        'ALREADY_EXISTS',
        `target snapshot ${target} already exists (remote layer ${layer.digest})`,
        {
          details: { remote: true },
        },
      );
    } finally {
      this.inflight.delete(target);
      done();
    }
  }

  /** The parent chain, bottom first, when every parent is a remote layer (with its TOC when mounted here). */
  private lowerLayers(parent: string): LowerLayer[] | undefined {
    if (!parent) return undefined;
    const chain = [this.mustGet(parent), ...this.store.parents(parent)].reverse();
    const lower: LowerLayer[] = [];
    for (const p of chain) {
      if (!p.remote) return undefined;
      lower.push({ layer: p.remote, toc: this.remoteMounts.get(p.id)?.toc });
    }
    return lower;
  }

  private async ensureRemoteMounted(s: SnapshotRecord): Promise<void> {
    if (!s.remote || this.remoteMounts.has(s.id) || !this.remote) return;
    await mkdir(this.fsOf(s.id), { recursive: true });
    const m = await this.remote.mount(
      s.remote,
      this.fsOf(s.id),
      s.parent ? this.lowerLayers(s.parent) : undefined,
    );
    this.remoteMounts.set(s.id, m);
  }

  private async mountsOf(s: SnapshotRecord): Promise<Mount[]> {
    const parents = this.store.parents(s.name);
    for (const p of parents) {
      if (p.remote && !this.remoteMounts.has(p.id)) {
        try {
          await this.ensureRemoteMounted(p);
        } catch (err) {
          throw new DfError(
            'NETWORK',
            `remote layer ${p.remote.digest} of snapshot ${p.name} cannot be mounted: ${(err as Error).message}`,
            {
              cause: err,
            },
          );
        }
      }
    }
    if (parents.length === 0) {
      return [
        { type: 'bind', source: this.fsOf(s.id), options: [s.kind === Kind.View ? 'ro' : 'rw', 'rbind'] },
      ];
    }
    if (s.kind === Kind.View && parents.length === 1) {
      return [{ type: 'bind', source: this.fsOf(parents[0]!.id), options: ['ro', 'rbind'] }];
    }
    const options: string[] = [];
    if (this.overlayIndexOff) options.push('index=off');
    if (s.kind === Kind.Active)
      options.push(`workdir=${join(this.dirOf(s.id), 'work')}`, `upperdir=${this.fsOf(s.id)}`);
    options.push(`lowerdir=${parents.map((p) => this.fsOf(p.id)).join(':')}`);
    return [{ type: 'overlay', source: 'overlay', options }];
  }

  mounts(key: string): Promise<Mount[]> {
    return this.locked(async () => {
      const s = this.mustGet(key);
      if (s.kind !== Kind.Active && s.kind !== Kind.View)
        throw new DfError(
          'FAILED_PRECONDITION',
          `snapshot ${key} is ${s.kind === Kind.Committed ? 'committed' : 'not active'}; only active and view snapshots have mounts`,
        );
      return this.mountsOf(s);
    });
  }

  commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    Snapshotter.checkKey(name, 'name');
    Snapshotter.checkKey(key);
    Snapshotter.checkLabels(labels);
    return this.locked(async () => {
      const s = this.mustGet(key);
      if (s.kind !== Kind.Active)
        throw new DfError(
          'FAILED_PRECONDITION',
          `snapshot ${key} is not active; only active snapshots can be committed`,
        );
      if (this.store.get(name)) throw new DfError('ALREADY_EXISTS', `snapshot ${name} already exists`);
      const usage = await diskUsage(this.fsOf(s.id));
      const now = Date.now();
      await this.store.update((d) => {
        const r = d.find((x) => x.name === key)!;
        r.name = name;
        r.kind = Kind.Committed;
        r.labels = { ...labels };
        r.created = now;
        r.updated = now;
        r.usage = usage;
      });
      // The work directory is only needed while the snapshot is active.
      await rm(join(this.dirOf(s.id), 'work'), { recursive: true, force: true }).catch(() => undefined);
    });
  }

  remove(key: string): Promise<void> {
    Snapshotter.checkKey(key);
    return this.locked(async () => {
      const s = this.mustGet(key);
      const children = this.store.children(key);
      if (children.length)
        throw new DfError(
          'FAILED_PRECONDITION',
          `snapshot ${key} has ${children.length} child snapshot(s) (e.g. ${children[0]!.name}); remove them first`,
        );
      await this.store.update(
        (d) =>
          void d.splice(
            d.findIndex((x) => x.name === key),
            1,
          ),
      );
      const m = this.remoteMounts.get(s.id);
      if (m) {
        this.remoteMounts.delete(s.id);
        await m.unmount().catch((err) => this.log.warn({ err, key }, 'remote snapshot: unmount failed'));
      }
      // The record is gone: a failure here leaves an orphan directory that start/Cleanup remove.
      await this.removeDir(s.id).catch((err) =>
        this.log.warn({ err, key }, 'snapshot directory not removed; Cleanup retries'),
      );
    });
  }

  stat(key: string): Promise<SnapshotInfo> {
    return this.locked(async () => infoOf(this.mustGet(key)));
  }

  /** Updates labels: paths 'labels' (replace all) or 'labels.<key>' (set, or delete when absent in info). */
  update(info: SnapshotInfo, paths: string[]): Promise<SnapshotInfo> {
    Snapshotter.checkKey(info.name, 'name');
    Snapshotter.checkLabels(info.labels);
    return this.locked(async () => {
      this.mustGet(info.name);
      for (const p of paths)
        if (p !== 'labels' && !p.startsWith('labels.'))
          throw DfError.invalidArgument(
            `cannot update field ${p} of snapshot ${info.name}; only labels are mutable`,
          );
      await this.store.update((d) => {
        const r = d.find((x) => x.name === info.name)!;
        if (paths.length === 0 || paths.includes('labels')) r.labels = { ...info.labels };
        else
          for (const p of paths) {
            const k = p.slice('labels.'.length);
            if (Object.prototype.hasOwnProperty.call(info.labels, k)) r.labels[k] = info.labels[k]!;
            else delete r.labels[k];
          }
        r.updated = Date.now();
      });
      return infoOf(this.mustGet(info.name));
    });
  }

  usage(key: string): Promise<Usage> {
    return this.locked(async () => {
      const s = this.mustGet(key);
      if (s.remote) return { size: s.remote.size, inodes: 0 };
      if (s.kind === Kind.Committed && s.usage) return s.usage;
      return diskUsage(this.fsOf(s.id));
    });
  }

  async walk(filters: string[]): Promise<SnapshotInfo[]> {
    const match = compileFilters(filters);
    return this.locked(async () => this.store.all().map(infoOf).filter(match));
  }

  /** Removes directories that no snapshot owns (left by crashes or failed removals). */
  cleanup(): Promise<string[]> {
    return this.locked(() => this.removeOrphans());
  }
}

/** Size (allocated blocks) and inode count of a local tree; hard links counted once. */
export async function diskUsage(dir: string): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  const visit = async (p: string): Promise<void> => {
    const st = await lstat(p, { bigint: true });
    const id = `${st.dev}:${st.ino}`;
    if (!seen.has(id)) {
      seen.add(id);
      size += Number(st.blocks) * 512;
    }
    if (st.isDirectory()) {
      const d = await opendir(p);
      for await (const e of d) await visit(join(p, e.name));
    }
  };
  try {
    await visit(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw DfError.from(err, `usage of ${dir}`);
  }
  return { size, inodes: seen.size };
}
