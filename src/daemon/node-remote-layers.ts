import type { LowerLayer, RemoteLayers, RemoteMount } from '../snapshotter/remote-layers.js';
import { LayerResolver, lowerTocsOf } from '../snapshotter/remote-layers.js';
import type { RemoteLayerRecord } from '../snapshotter/types.js';
import type { Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import { parseReference } from '../registry/reference.js';
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
    return {
      toc: mounted.fs.toc,
      check: () => mounted.mount.check(),
      unmount: () => this.runtime.releaseLayer(mounted),
    };
  }
}
