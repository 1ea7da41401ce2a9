import type { LowerLayer, RemoteLayers, RemoteMount } from '../snapshotter/remote-layers.js';
import { LayerResolver, lowerTocsOf } from '../snapshotter/remote-layers.js';
import type { RemoteLayerRecord } from '../snapshotter/types.js';
import { DFB_LAYER_MEDIA_TYPE } from '../blob/types.js';
import type { Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import { dfbLayerOf } from '../registry/image.js';
import type { Descriptor } from '../registry/oci.js';
import { parseReference, type ImageReference } from '../registry/reference.js';
import type { NodeRuntime } from './node-runtime.js';

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

  /**
   * Reads the TOCs of an image's DFB layers into the cache, all at once and in the background (a pull
   * through `dfnode run` has just read the manifest): the mounts that follow, one per Prepare and each after
   * its parent's, then find their TOCs local, and a mount that starts while its TOC is on the way waits for
   * that read (LayerStore.readToc) instead of fetching it again. Failures are only logged: the mount fetches
   * the TOC again and reports its own error.
   */
  warm(imageRef: string, layers: Descriptor[]): void {
    let ref: ImageReference;
    try {
      ref = parseReference(imageRef);
    } catch {
      return;
    }
    this.runtime.layers.warmTocs(
      layers.filter((d) => d.mediaType === DFB_LAYER_MEDIA_TYPE).map(dfbLayerOf),
      ref,
    );
  }

  resolve(labels: Record<string, string>, signal?: AbortSignal): Promise<RemoteLayerRecord | undefined> {
    return this.resolver.resolve(labels, signal);
  }

  probe(mountpoint: string): Promise<void> {
    return this.runtime.probeMount(mountpoint);
  }

  async mount(
    layer: RemoteLayerRecord,
    mountpoint: string,
    lower?: LowerLayer[],
    signal?: AbortSignal,
  ): Promise<RemoteMount> {
    const ref = parseReference(layer.ref);
    const mounted = await this.runtime.mountLayer(ref, dfbOf(layer), mountpoint, {
      lowerTocs: lowerTocsOf(lower),
      signal,
    });
    return {
      toc: mounted.fs.toc,
      check: () => mounted.mount.check(),
      unmount: () => this.runtime.releaseLayer(mounted),
    };
  }
}

const dfbOf = (layer: RemoteLayerRecord) => ({
  digest: layer.digest,
  size: layer.size,
  tocDigest: layer.tocDigest,
  diffId: layer.diffId,
  tocOffset: layer.tocOffset,
});
