import type { Toc } from '../blob/toc.js';
import { DFB_LAYER_MEDIA_TYPE } from '../blob/types.js';
import { Labels } from '../containerd/labels.js';
import { silentLogger, type Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import type { Descriptor } from '../registry/oci.js';
import { parseReference, type ImageReference } from '../registry/reference.js';
import { dfbLayerOf, resolveManifest } from '../registry/image.js';
import type { RemoteLayerRecord } from './types.js';

/** A mounted remote layer: its TOC (for the layers above), whether it still answers, and how to undo it. */
export interface RemoteMount {
  toc?: Toc;
  /**
   * True while the layer is served at its mountpoint; false when the mount is known to be gone (unmounted
   * behind our back, or its server died: ENOTCONN). Throws when it cannot tell (the server does not answer).
   */
  check(): Promise<boolean>;
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
 * The seam between the snapshotter and the lazy-layer machinery (stargz's mount/check/unmount, check and
 * unmount being on the RemoteMount that mount returns), so the snapshotter is testable without FUSE or a
 * registry.
 *
 * Prepare with the labels of a remote snapshot (Labels.snapshotRef plus the image and layer labels) asks
 * `resolve`; a layer it knows is mounted with `mount` and committed under the target name. Mounts (and
 * Prepare/View on top of remote layers) run `check` on the remote layers below and mount a dead one again.
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
  /** Mounts an empty layer at `mountpoint` and unmounts it: proof that mounts work here (see Snapshotter.start). */
  probe?(mountpoint: string): Promise<void>;
}

/** TOCs of `lower` when every one is known (implied directories then inherit their attributes). */
export function lowerTocsOf(lower: LowerLayer[] | undefined): Toc[] | undefined {
  if (!lower?.length) return undefined;
  const tocs = lower.map((below) => below.toc);
  return tocs.every((toc): toc is Toc => toc !== undefined) ? tocs : undefined;
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
  /**
   * Called once per image manifest whose layers become known (a pull's `remember`, or the first Prepare of
   * an image from CRI or containerd's own unpacker): the caller starts every layer's TOC read there, so that
   * the Prepares that follow, one after the other, find their TOCs local or on their way.
   */
  onImage?: (imageRef: string, layers: Descriptor[]) => void;

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
    const imageRef = labels[Labels.criImageRef] ?? labels[Labels.remoteImageRef];
    const digest = labels[Labels.criLayerDigest] ?? labels[Labels.remoteLayerDigest];
    if (!labels[Labels.snapshotRef] || !imageRef || !digest) return undefined;
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
    const manifestDigest = labels[Labels.criManifestDigest];
    const layers = await this.layersOf(ref, manifestDigest, signal);
    const descriptor = layers.find((layer) => layer.digest === digest);
    if (!descriptor || descriptor.mediaType !== DFB_LAYER_MEDIA_TYPE) return undefined;
    return { ref: ref.toString(), ...dfbLayerOf(descriptor) };
  }

  /**
   * Takes the layers of `imageRef`'s manifest `manifestDigest` from a caller that has just read it (a pull
   * through `dfnode run`), so that the Prepares of its layers do not fetch the manifest again.
   */
  remember(imageRef: string, manifestDigest: string, layers: Descriptor[]): void {
    let ref: ImageReference;
    try {
      ref = parseReference(imageRef);
    } catch {
      return;
    }
    const key = `${ref.toString()}@${manifestDigest}`;
    const hit = this.manifests.get(key);
    this.manifests.set(key, { at: Date.now(), layers: Promise.resolve(layers) });
    if (!hit || Date.now() - hit.at >= this.ttlMs) this.announce(ref, layers);
  }

  private announce(ref: ImageReference, layers: Descriptor[]): void {
    try {
      this.onImage?.(ref.toString(), layers);
    } catch (err) {
      this.log.debug({ err, image: ref.toString() }, 'image layers hook failed');
    }
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
    layers.then(
      (got) => this.announce(ref, got),
      () => this.manifests.delete(key),
    );
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
