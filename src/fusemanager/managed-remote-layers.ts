import { silentLogger, type Logger } from '../log.js';
import type { LayerResolver, LowerLayer, RemoteLayers, RemoteMount } from '../snapshotter/remote-layers.js';
import type { RemoteLayerRecord } from '../snapshotter/types.js';
import type { FuseManagerClient } from './client.js';
import type { ManagedMount } from './protocol.js';

const layerOf = (l: RemoteLayerRecord) => ({
  digest: l.digest,
  size: l.size,
  tocDigest: l.tocDigest,
  diffId: l.diffId,
});

/**
 * RemoteLayers whose FUSE mounts are served by the FUSE manager: they outlive the snapshotter process
 * (persistent), and a restarted snapshotter adopts the ones the manager still serves.
 */
export class ManagedRemoteLayers implements RemoteLayers {
  private readonly log: Logger;
  private listing?: { at: number; mounts: Promise<ManagedMount[]> };

  constructor(
    private readonly client: FuseManagerClient,
    private readonly resolver: LayerResolver,
    opts: { logger?: Logger } = {},
  ) {
    this.log = opts.logger ?? silentLogger;
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
    // The manager computes implied-directory inheritance from the lower layers' TOCs itself.
    await this.client.mount(
      {
        imageRef: layer.ref,
        layer: layerOf(layer),
        mountpoint,
        lowerLayers: (lower ?? []).map((l) => layerOf(l.layer)),
      },
      signal,
    );
    this.listing = undefined;
    return this.handle(mountpoint);
  }

  async adopt(layer: RemoteLayerRecord, mountpoint: string): Promise<RemoteMount | undefined> {
    // One listing serves the adoption of every snapshot at start.
    if (!this.listing || Date.now() - this.listing.at > 2000)
      this.listing = { at: Date.now(), mounts: this.client.list() };
    const live = (await this.listing.mounts).find((m) => m.mountpoint === mountpoint);
    if (!live) return undefined;
    if (live.digest !== layer.digest) {
      this.log.warn(
        { mountpoint, served: live.digest, want: layer.digest },
        'fuse manager serves another layer here; mounting again',
      );
      return undefined;
    }
    return this.handle(mountpoint);
  }

  private handle(mountpoint: string): RemoteMount {
    return {
      persistent: true,
      unmount: async () => {
        this.listing = undefined;
        await this.client.release(mountpoint);
      },
    };
  }
}
