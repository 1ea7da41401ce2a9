import type { Toc } from '../blob/toc.js';
import { DFB_LAYER_MEDIA_TYPE } from '../blob/types.js';
import type { NodeRuntime } from '../daemon/node-runtime.js';
import { silentLogger, type Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import type { Descriptor } from '../registry/oci.js';
import { parseReference, type ImageReference } from '../registry/reference.js';
import { dfbLayerOf, resolveManifest } from '../registry/image.js';
import type { RemoteLayerRecord } from './types.js';

/**
 * Labels that mark a Prepare as a candidate remote snapshot.
 *
 * containerd sets TARGET_REF (the chain ID the snapshot will be committed as) when it asks a snapshotter
 * for a remote snapshot. The layer is described by the labels containerd's CRI plugin adds when
 * `disable_snapshot_annotations = false` (and that `dfnode pull` sets too): image reference, layer digest,
 * manifest digest and the image's layer list. stargz-style `containerd.io/snapshot/remote/...` labels are
 * accepted as synonyms for the image reference and layer digest.
 */
export const Labels = {
  targetRef: 'containerd.io/snapshot.ref',
  imageRef: 'containerd.io/snapshot/cri.image-ref',
  layerDigest: 'containerd.io/snapshot/cri.layer-digest',
  manifestDigest: 'containerd.io/snapshot/cri.manifest-digest',
  imageLayers: 'containerd.io/snapshot/cri.image-layers',
  remoteImageRef: 'containerd.io/snapshot/remote/image.reference',
  remoteLayerDigest: 'containerd.io/snapshot/remote/layer.digest',
  /** Set by dfnode on the remote snapshots it commits (value: the DFB blob digest). */
  dfbLayer: 'containerd.io/snapshot/dfnode.dfb-layer',
} as const;

/** A mounted remote layer: its TOC (for the layers above) and how to undo the mount. */
export interface RemoteMount {
  toc?: Toc;
  unmount(): Promise<void>;
  /**
   * Served by a process that outlives the snapshotter (the FUSE manager): the snapshotter's close() leaves it
   * mounted, and a new snapshotter adopts it instead of mounting again.
   */
  persistent?: boolean;
}

/** A layer below the one being mounted: its record and, when the snapshotter holds it, its TOC. */
export interface LowerLayer {
  layer: RemoteLayerRecord;
  toc?: Toc;
}

/**
 * The seam between the snapshotter and the lazy-layer machinery (stargz's mount/check/unmount), so the
 * snapshotter is testable without FUSE or a registry.
 */
export interface RemoteLayers {
  /** The remote layer named by Prepare's labels, or undefined when it is not a DFB layer (or unknown). */
  resolve(labels: Record<string, string>, signal?: AbortSignal): Promise<RemoteLayerRecord | undefined>;
  /** Mounts the layer read-only at `mountpoint`; `lower` are the remote layers below, bottom first. */
  mount(
    layer: RemoteLayerRecord,
    mountpoint: string,
    lower?: LowerLayer[],
    signal?: AbortSignal,
  ): Promise<RemoteMount>;
  /**
   * A live mount of `layer` at `mountpoint` that survived the previous snapshotter process (served by a
   * process that outlives it), or undefined when there is none: the snapshotter then cleans the mountpoint
   * and mounts again. Implementations without such a process leave it out.
   */
  adopt?(layer: RemoteLayerRecord, mountpoint: string): Promise<RemoteMount | undefined>;
}

/** TOCs of `lower` when every one is known (implied directories then inherit their attributes). */
export function lowerTocsOf(lower: LowerLayer[] | undefined): Toc[] | undefined {
  if (!lower?.length) return undefined;
  const tocs = lower.map((l) => l.toc);
  return tocs.every((t): t is Toc => t !== undefined) ? tocs : undefined;
}

interface CachedManifest {
  at: number;
  layers: Promise<Descriptor[]>;
}

/**
 * Which Prepare is a remote DFB layer: the image's manifest from the registry (cached per image), the layer
 * named by the labels, and its DFB annotations. Shared by the in-process and the FUSE-manager remote layers.
 */
export class LayerResolver {
  private readonly manifests = new Map<string, CachedManifest>();
  private readonly log: Logger;
  private readonly ttlMs: number;

  constructor(
    private readonly client: RegistryClient,
    opts: { logger?: Logger; manifestTtlMs?: number } = {},
  ) {
    this.log = opts.logger ?? silentLogger;
    this.ttlMs = opts.manifestTtlMs ?? 10 * 60_000;
  }

  async resolve(
    labels: Record<string, string>,
    signal?: AbortSignal,
  ): Promise<RemoteLayerRecord | undefined> {
    const imageRef = labels[Labels.imageRef] ?? labels[Labels.remoteImageRef];
    const digest = labels[Labels.layerDigest] ?? labels[Labels.remoteLayerDigest];
    if (!labels[Labels.targetRef] || !imageRef || !digest) return undefined;
    let ref: ImageReference;
    try {
      ref = parseReference(imageRef);
    } catch (err) {
      this.log.warn(
        { err, imageRef },
        'remote snapshot: bad image reference label; falling back to a normal snapshot',
      );
      return undefined;
    }
    const manifestDigest = labels[Labels.manifestDigest];
    const layers = await this.layersOf(ref, manifestDigest, signal);
    const d = layers.find((l) => l.digest === digest);
    if (!d || d.mediaType !== DFB_LAYER_MEDIA_TYPE) return undefined;
    return { ref: ref.toString(), ...dfbLayerOf(d) };
  }

  /** Layer descriptors of an image (the manifest named by digest when known, else the host platform's). */
  private layersOf(
    ref: ImageReference,
    manifestDigest: string | undefined,
    signal?: AbortSignal,
  ): Promise<Descriptor[]> {
    const key = `${ref.toString()}@${manifestDigest ?? ''}`;
    const hit = this.manifests.get(key);
    if (hit && Date.now() - hit.at < this.ttlMs) return hit.layers;
    const layers = this.fetchLayers(ref, manifestDigest, signal);
    this.manifests.set(key, { at: Date.now(), layers });
    layers.catch(() => this.manifests.delete(key));
    return layers;
  }

  private async fetchLayers(
    ref: ImageReference,
    manifestDigest: string | undefined,
    signal?: AbortSignal,
  ): Promise<Descriptor[]> {
    return (await resolveManifest(this.client, ref, { manifestDigest, signal })).layers;
  }
}

/** RemoteLayers over an in-process node runtime: FUSE mounts served by this process (they die with it). */
export class NodeRemoteLayers implements RemoteLayers {
  private readonly resolver: LayerResolver;

  constructor(
    private readonly runtime: NodeRuntime,
    client: RegistryClient,
    opts: { logger?: Logger; manifestTtlMs?: number; resolver?: LayerResolver } = {},
  ) {
    this.resolver = opts.resolver ?? new LayerResolver(client, opts);
  }

  resolve(labels: Record<string, string>, signal?: AbortSignal): Promise<RemoteLayerRecord | undefined> {
    return this.resolver.resolve(labels, signal);
  }

  async mount(
    layer: RemoteLayerRecord,
    mountpoint: string,
    lower?: LowerLayer[],
    signal?: AbortSignal,
  ): Promise<RemoteMount> {
    const ref = parseReference(layer.ref);
    const mounted = await this.runtime.mountLayer(
      ref,
      { digest: layer.digest, size: layer.size, tocDigest: layer.tocDigest, diffId: layer.diffId },
      mountpoint,
      { lowerTocs: lowerTocsOf(lower), signal },
    );
    return { toc: mounted.fs.toc, unmount: () => this.runtime.releaseLayer(mounted) };
  }
}
