/**
 * Labels and names containerd gives meaning to, as its own pull/unpack path sets them (containerd 1.6:
 * pkg/snapshotters/annotations.go, unpacker.go, gc/gc.go, leases/lease.go), and the ones remote snapshotters
 * read and set. The one home of these names: the puller sets them, the snapshotter reads them.
 */
export const Labels = {
  /**
   * On a Prepare: the name under which a remote snapshotter commits the layer (the chain ID; containerd's
   * TargetSnapshotLabel). Its presence marks the Prepare as a candidate remote snapshot.
   */
  snapshotRef: 'containerd.io/snapshot.ref',
  /** Image reference, for remote snapshotters (CRI's AppendInfoHandlerWrapper). */
  criImageRef: 'containerd.io/snapshot/cri.image-ref',
  criManifestDigest: 'containerd.io/snapshot/cri.manifest-digest',
  criLayerDigest: 'containerd.io/snapshot/cri.layer-digest',
  /** This layer's digest and those above it, comma separated, cut to fit the label size limit. */
  criImageLayers: 'containerd.io/snapshot/cri.image-layers',
  /** stargz-snapshotter's synonyms of criImageRef and criLayerDigest (accepted on a Prepare). */
  remoteImageRef: 'containerd.io/snapshot/remote/image.reference',
  remoteLayerDigest: 'containerd.io/snapshot/remote/layer.digest',
  /** Set by dfnode on the remote snapshots it commits (value: the DFB blob digest). */
  dfbLayer: 'containerd.io/snapshot/dfnode.dfb-layer',
  /** On a lease: RFC 3339 time after which the garbage collector drops it. */
  gcExpire: 'containerd.io/gc.expire',
  /** On content: references that keep other content or snapshots alive. */
  gcRefContent: 'containerd.io/gc.ref.content',
  gcRefSnapshot: 'containerd.io/gc.ref.snapshot',
} as const;

/** containerd rejects a label whose key and value together exceed this many bytes (labels.Validate). */
export const MAX_LABEL_BYTES = 4096;

/** gRPC metadata keys containerd reads. */
export const Metadata = {
  namespace: 'containerd-namespace',
  lease: 'containerd-lease',
} as const;

/** Comma-joined digests, as many as fit in one label under `key` (containerd's getLayers). */
export function layersLabel(key: string, digests: string[]): string {
  let out = '';
  for (const d of digests) {
    const next = out ? `${out},${d}` : d;
    if (Buffer.byteLength(key) + Buffer.byteLength(next) > MAX_LABEL_BYTES) break;
    out = next;
  }
  return out;
}
