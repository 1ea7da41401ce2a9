import { MAX_LABEL_BYTES } from '../containerd/labels.js';
import { DfError } from '../errors.js';
import {
  infoOf,
  Kind,
  type RemoteLayerRecord,
  type SnapshotInfo,
  type SnapshotRecord,
  type Usage,
} from './types.js';

/** Everything the store persists. */
export interface MetadataState {
  version: 1;
  /** Next snapshot directory id (ids are never reused while the metadata file lives). */
  nextId: number;
  snapshots: SnapshotRecord[];
}

/** A snapshot and its parents, nearest first. */
export interface SnapshotChain {
  snapshot: SnapshotRecord;
  parents: SnapshotRecord[];
}

/** What Commit sets on the committed snapshot. */
export interface CommitOptions {
  labels: Record<string, string>;
  /** Disk usage of the snapshot's directory, recorded once (containerd's overlay snapshotter does the same). */
  usage?: Usage;
  /** Committing a remote Prepare: the layer the active snapshot was recorded for. */
  remote?: RemoteLayerRecord;
}

const copyOf = (snapshot: SnapshotRecord): SnapshotRecord => ({
  ...snapshot,
  labels: { ...snapshot.labels },
});

function checkName(name: string, what: string): void {
  if (!name) throw DfError.invalidArgument(`snapshot ${what} must not be empty`);
}

/** containerd's labels.Validate: non-empty keys, key and value together at most MAX_LABEL_BYTES. */
function checkLabels(labels: Record<string, string>): void {
  for (const [key, value] of Object.entries(labels)) {
    if (!key) throw DfError.invalidArgument('label keys must not be empty');
    if (Buffer.byteLength(key) + Buffer.byteLength(value) > MAX_LABEL_BYTES)
      throw DfError.invalidArgument(`label ${key} is longer than ${MAX_LABEL_BYTES} bytes (key + value)`);
  }
}

/**
 * One transaction of the metadata store, holding the rules of containerd's snapshots/storage metastore:
 * keys and names are unique and non-empty, a parent exists and is committed, Prepare/View create active and
 * view snapshots, Commit turns an active snapshot into a committed one under a new name, Remove only takes a
 * snapshot without children, only labels are mutable and they respect containerd's size limit.
 *
 * Reads see the state as of the start plus this transaction's own changes; the first change copies the state
 * (the store persists the copy when the transaction's function succeeds and drops it when it throws).
 * Records handed out are copies: changing them changes nothing.
 */
export class MetadataTransaction {
  private draft?: MetadataState;
  private byName: Map<string, SnapshotRecord>;
  private open = true;

  constructor(
    private readonly base: MetadataState,
    readonly writable: boolean,
  ) {
    this.byName = new Map(base.snapshots.map((snapshot) => [snapshot.name, snapshot]));
  }

  private get state(): MetadataState {
    return this.draft ?? this.base;
  }

  private checkOpen(): void {
    if (!this.open) throw DfError.internal('snapshot metadata transaction used after it ended');
  }

  /** The state to change: a copy of the base, made on the first change. */
  private mutable(): MetadataState {
    this.checkOpen();
    if (!this.writable) throw DfError.internal('snapshot metadata: change in a read-only transaction');
    if (!this.draft) {
      this.draft = { version: 1, nextId: this.base.nextId, snapshots: this.base.snapshots.map(copyOf) };
      this.byName = new Map(this.draft.snapshots.map((snapshot) => [snapshot.name, snapshot]));
    }
    return this.draft;
  }

  /** Ends the transaction: the state to persist when it changed anything, else undefined. */
  finish(): MetadataState | undefined {
    this.open = false;
    return this.draft;
  }

  /** Ends the transaction without keeping its changes. */
  abandon(): void {
    this.open = false;
    this.draft = undefined;
  }

  private find(key: string): SnapshotRecord {
    this.checkOpen();
    const snapshot = this.byName.get(key);
    if (!snapshot) throw DfError.notFound(`snapshot ${key} does not exist`);
    return snapshot;
  }

  private parentsOf(snapshot: SnapshotRecord): SnapshotRecord[] {
    const out: SnapshotRecord[] = [];
    for (let name = snapshot.parent; name;) {
      const parent = this.byName.get(name);
      if (!parent) throw DfError.internal(`snapshot metadata: parent ${name} of ${snapshot.name} is missing`);
      out.push(parent);
      name = parent.parent;
    }
    return out;
  }

  // ------------------------------------------------------------------------------------ reads

  /** The snapshot named `key`, or undefined. */
  lookup(key: string): SnapshotRecord | undefined {
    this.checkOpen();
    const snapshot = this.byName.get(key);
    return snapshot && copyOf(snapshot);
  }

  /** The snapshot named `key` (any kind); NOT_FOUND when there is none. */
  getInfo(key: string): SnapshotRecord {
    return copyOf(this.find(key));
  }

  /** An active or view snapshot and its parents (what its mounts are made of); containerd's GetSnapshot. */
  getSnapshot(key: string): SnapshotChain {
    const snapshot = this.find(key);
    if (snapshot.kind === Kind.Committed)
      throw new DfError(
        'FAILED_PRECONDITION',
        `snapshot ${key} is committed; only active and view snapshots have mounts`,
      );
    if (snapshot.remote)
      throw new DfError(
        'FAILED_PRECONDITION',
        `snapshot ${key} is a remote layer being prepared; it is committed under its target name, use that`,
      );
    return { snapshot: copyOf(snapshot), parents: this.parentsOf(snapshot).map(copyOf) };
  }

  /** Parents of `key`, nearest first. */
  parents(key: string): SnapshotRecord[] {
    return this.parentsOf(this.find(key)).map(copyOf);
  }

  /** Every snapshot, in the order they were created or committed. */
  walk(visit: (snapshot: SnapshotRecord) => void): void {
    this.checkOpen();
    for (const snapshot of this.state.snapshots) visit(copyOf(snapshot));
  }

  /** Directory ids of every snapshot. */
  ids(): Set<string> {
    this.checkOpen();
    return new Set(this.state.snapshots.map((snapshot) => snapshot.id));
  }

  // ---------------------------------------------------------------------------------- changes

  /** Throws what createSnapshot would for these arguments, changing nothing (to fail before network work). */
  checkCreate(kind: Kind, key: string, parent: string, labels: Record<string, string>): void {
    this.checkOpen();
    checkName(key, 'key');
    checkLabels(labels);
    if (kind !== Kind.Active && kind !== Kind.View)
      throw DfError.invalidArgument(`snapshot ${key}: only active and view snapshots can be created`);
    if (this.byName.has(key)) throw new DfError('ALREADY_EXISTS', `snapshot ${key} already exists`);
    if (!parent) return;
    const parentSnapshot = this.byName.get(parent);
    if (!parentSnapshot) throw DfError.notFound(`parent snapshot ${parent} does not exist`);
    if (parentSnapshot.kind !== Kind.Committed)
      throw new DfError(
        'FAILED_PRECONDITION',
        `parent snapshot ${parent} is not committed (commit it first)`,
      );
  }

  /**
   * Records a new active or view snapshot under a fresh directory id. `remote`: the active snapshot of a
   * remote Prepare, recorded before its layer is mounted (only commitActive with the same layer commits it;
   * one left by a crash is found by its `remote` field and removed).
   */
  createSnapshot(
    kind: Kind,
    key: string,
    parent: string,
    labels: Record<string, string>,
    remote?: RemoteLayerRecord,
  ): SnapshotChain {
    this.checkCreate(kind, key, parent, labels);
    if (remote && kind !== Kind.Active)
      throw DfError.invalidArgument(`snapshot ${key}: a remote layer is prepared as an active snapshot`);
    const state = this.mutable();
    const now = Date.now();
    const snapshot: SnapshotRecord = {
      id: String(state.nextId++),
      name: key,
      parent,
      kind,
      labels: { ...labels },
      created: now,
      updated: now,
    };
    if (remote) snapshot.remote = { ...remote };
    state.snapshots.push(snapshot);
    this.byName.set(key, snapshot);
    return { snapshot: copyOf(snapshot), parents: this.parentsOf(snapshot).map(copyOf) };
  }

  /** Turns the active snapshot `key` into a committed snapshot named `name`, keeping its directory. */
  commitActive(key: string, name: string, opts: CommitOptions): SnapshotRecord {
    checkName(name, 'name');
    checkName(key, 'key');
    checkLabels(opts.labels);
    const current = this.find(key);
    if (current.kind !== Kind.Active)
      throw new DfError(
        'FAILED_PRECONDITION',
        `snapshot ${key} is not active; only active snapshots can be committed`,
      );
    if (current.remote?.digest !== opts.remote?.digest)
      throw new DfError(
        'FAILED_PRECONDITION',
        current.remote
          ? `snapshot ${key} is a remote layer being prepared; the snapshotter commits it itself`
          : `snapshot ${key} was not prepared as remote layer ${opts.remote!.digest}`,
      );
    if (this.byName.has(name)) throw new DfError('ALREADY_EXISTS', `snapshot ${name} already exists`);
    this.mutable();
    // the record of this transaction's copy of the store (mutable() copied it)
    const snapshot = this.find(key);
    const now = Date.now();
    snapshot.name = name;
    snapshot.kind = Kind.Committed;
    snapshot.labels = { ...opts.labels };
    snapshot.created = now;
    snapshot.updated = now;
    if (opts.usage) snapshot.usage = { ...opts.usage };
    this.byName.delete(key);
    this.byName.set(name, snapshot);
    return copyOf(snapshot);
  }

  /** Removes the snapshot `key`, which must have no children; returns it (its directory is the caller's). */
  remove(key: string): SnapshotRecord {
    checkName(key, 'key');
    this.find(key);
    const children = this.state.snapshots.filter((snapshot) => snapshot.parent === key);
    if (children.length)
      throw new DfError(
        'FAILED_PRECONDITION',
        `snapshot ${key} has ${children.length} child snapshot(s) (e.g. ${children[0]!.name}); remove them first`,
      );
    const state = this.mutable();
    const index = state.snapshots.findIndex((snapshot) => snapshot.name === key);
    const [removed] = state.snapshots.splice(index, 1);
    this.byName.delete(key);
    return removed!;
  }

  /**
   * Updates the labels of `info.name`: field paths 'labels' (replace all; also when no path is given) or
   * 'labels.<key>' (set, or delete when `info.labels` lacks the key). Every other field is immutable.
   */
  updateInfo(info: SnapshotInfo, fieldPaths: string[]): SnapshotInfo {
    checkName(info.name, 'name');
    this.find(info.name);
    for (const path of fieldPaths)
      if (path !== 'labels' && !path.startsWith('labels.'))
        throw DfError.invalidArgument(
          `cannot update field ${path} of snapshot ${info.name}; only labels are mutable`,
        );
    this.mutable();
    const snapshot = this.find(info.name);
    const replace = fieldPaths.length === 0 || fieldPaths.includes('labels');
    const labels = replace ? { ...info.labels } : { ...snapshot.labels };
    if (!replace) {
      for (const path of fieldPaths) {
        const key = path.slice('labels.'.length);
        if (Object.prototype.hasOwnProperty.call(info.labels, key)) labels[key] = info.labels[key]!;
        else delete labels[key];
      }
    }
    checkLabels(labels);
    snapshot.labels = labels;
    snapshot.updated = Date.now();
    return infoOf(snapshot);
  }
}
