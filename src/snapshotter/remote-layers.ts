import type { Toc } from '../blob/toc.js';
import { DFB_LAYER_MEDIA_TYPE, Annotations } from '../blob/types.js';
import type { NodeRuntime } from '../daemon/node-runtime.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import { parseManifestOrIndex, platformMatches, type Descriptor } from '../registry/oci.js';
import { parseReference, type ImageReference } from '../registry/reference.js';
import { hostPlatform } from '../daemon/image.js';
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
}

/**
 * The seam between the snapshotter and the lazy-layer machinery (stargz's mount/check/unmount), so the
 * snapshotter is testable without FUSE or a registry.
 */
export interface RemoteLayers {
  /** The remote layer named by Prepare's labels, or undefined when it is not a DFB layer (or unknown). */
  resolve(labels: Record<string, string>, signal?: AbortSignal): Promise<RemoteLayerRecord | undefined>;
  /** Mounts the layer read-only at `mountpoint`; `lowerTocs` are the layers below, bottom first. */
  mount(
    layer: RemoteLayerRecord,
    mountpoint: string,
    lowerTocs?: Toc[],
    signal?: AbortSignal,
  ): Promise<RemoteMount>;
}

interface CachedManifest {
  at: number;
  layers: Promise<Descriptor[]>;
}

/** RemoteLayers over the node runtime: manifests from the registry (cached per image), FUSE mounts. */
export class NodeRemoteLayers implements RemoteLayers {
  private readonly manifests = new Map<string, CachedManifest>();
  private readonly log: Logger;
  private readonly ttlMs: number;

  constructor(
    private readonly runtime: NodeRuntime,
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
    return {
      ref: ref.toString(),
      digest: d.digest,
      size: d.size,
      tocDigest: d.annotations?.[Annotations.tocDigest],
      diffId: d.annotations?.[Annotations.diffId],
    };
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
    const target = manifestDigest ? ref.withDigest(manifestDigest) : ref;
    let m = await this.client.getManifest(target, { signal });
    let parsed = parseManifestOrIndex(m.bytes, m.mediaType, `manifest of ${target}`);
    if (parsed.kind === 'index') {
      const platform = hostPlatform();
      const want = parsed.index.manifests.find((d) => platformMatches(d.platform, [platform]));
      if (!want) throw DfError.notFound(`${ref} has no image for ${platform}`);
      m = await this.client.getManifest(ref.withDigest(want.digest), { signal });
      parsed = parseManifestOrIndex(m.bytes, m.mediaType, `manifest ${want.digest} of ${ref}`);
      if (parsed.kind !== 'manifest')
        throw DfError.unsupported(`${ref}: nested image indexes are not supported`);
    }
    return parsed.manifest.layers;
  }

  async mount(
    layer: RemoteLayerRecord,
    mountpoint: string,
    lowerTocs?: Toc[],
    signal?: AbortSignal,
  ): Promise<RemoteMount> {
    const ref = parseReference(layer.ref);
    const mounted = await this.runtime.mountLayer(
      ref,
      { digest: layer.digest, size: layer.size, tocDigest: layer.tocDigest, diffId: layer.diffId },
      mountpoint,
      { lowerTocs, signal },
    );
    return { toc: mounted.fs.toc, unmount: () => this.runtime.releaseLayer(mounted) };
  }
}
