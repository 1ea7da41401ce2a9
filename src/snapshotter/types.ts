/** containerd snapshot kinds, numbered as containerd's snapshots.v1 Kind enum. */
export enum Kind {
  Unknown = 0,
  View = 1,
  Active = 2,
  Committed = 3,
}

export const KIND_NAMES: Record<Kind, string> = {
  [Kind.Unknown]: 'unknown',
  [Kind.View]: 'view',
  [Kind.Active]: 'active',
  [Kind.Committed]: 'committed',
};

/** A DFB layer mounted lazily as a committed snapshot (persisted, so a new process can mount it again). */
export interface RemoteLayerRecord {
  /** Image reference the layer is fetched from (repository + tag or digest). */
  ref: string;
  digest: string;
  size: number;
  tocDigest?: string;
  diffId?: string;
  /** TOC offset annotation (a hint: one range read for TOC and footer). */
  tocOffset?: number;
}

/** One snapshot in the metadata store. `name` is the key (active/view) or the committed name. */
export interface SnapshotRecord {
  /** Directory id: <root>/snapshots/<id>/{fs,work}. */
  id: string;
  name: string;
  /** Name of the parent (a committed snapshot), '' for none. */
  parent: string;
  kind: Kind;
  labels: Record<string, string>;
  /** Milliseconds since the epoch. */
  created: number;
  updated: number;
  /** Disk usage recorded at commit (containerd's overlay snapshotter does the same). */
  usage?: { size: number; inodes: number };
  /**
   * The DFB layer mounted lazily on fs/: on a committed snapshot, the layer it is; on an active one, a remote
   * Prepare recorded before its mount (committed under the target name when the mount succeeds; one a crash
   * left is removed on start and on Cleanup).
   */
  remote?: RemoteLayerRecord;
}

/** Snapshot info as containerd sees it. */
export interface SnapshotInfo {
  name: string;
  parent: string;
  kind: Kind;
  labels: Record<string, string>;
  created: number;
  updated: number;
}

/** containerd.types.Mount. */
export interface Mount {
  type: string;
  source: string;
  target?: string;
  options: string[];
}

export interface Usage {
  size: number;
  inodes: number;
}

export function infoOf(snapshot: SnapshotRecord): SnapshotInfo {
  return {
    name: snapshot.name,
    parent: snapshot.parent,
    kind: snapshot.kind,
    labels: { ...snapshot.labels },
    created: snapshot.created,
    updated: snapshot.updated,
  };
}
