import { mkdir } from 'node:fs/promises';
import { DFB_LAYER_MEDIA_TYPE } from '../blob/types.js';
import { dfbLayerOf } from '../registry/image.js';
import type { Descriptor } from '../registry/oci.js';
import { isFuseType, readMountInfo } from '../fuse/mounts.js';
import { silentLogger, type Logger } from '../log.js';
import type { LayerResolver, LowerLayer, RemoteLayers, RemoteMount } from '../snapshotter/remote-layers.js';
import type { RemoteLayerRecord } from '../snapshotter/types.js';
import type { FuseManagerClient } from './client.js';
import type { ManagedLayer, ManagedMount } from './protocol.js';

const managedLayerOf = (layer: RemoteLayerRecord): ManagedLayer => ({
  digest: layer.digest,
  size: layer.size,
  tocDigest: layer.tocDigest,
  diffId: layer.diffId,
  tocOffset: layer.tocOffset,
});

/** One listing of the manager's mounts serves the checks and adoptions of a burst of calls. */
const LISTING_TTL_MS = 1000;

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

  /** The manager reads the TOCs of an image's DFB layers now (NodeRemoteLayers.warm, in the manager). */
  warm(imageRef: string, layers: Descriptor[]): void {
    const dfb = layers.filter((d) => d.mediaType === DFB_LAYER_MEDIA_TYPE);
    if (!dfb.length) return;
    this.client
      .warm(
        imageRef,
        dfb.map((d) => managedLayerOf({ ref: imageRef, ...dfbLayerOf(d) })),
      )
      .catch((err: unknown) => this.log.debug({ err, image: imageRef }, 'TOC warm-up request failed'));
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
        layer: managedLayerOf(layer),
        mountpoint,
        lowerLayers: (lower ?? []).map((below) => managedLayerOf(below.layer)),
      },
      signal,
    );
    this.listing = undefined;
    return this.handle(layer, mountpoint);
  }

  /** The probe mount, made by the manager (which checks that the directory is under the node's). */
  async probe(mountpoint: string): Promise<void> {
    await mkdir(mountpoint, { recursive: true });
    await this.client.probe(mountpoint);
  }

  async adopt(layer: RemoteLayerRecord, mountpoint: string): Promise<RemoteMount | undefined> {
    const served = (await this.mounts()).find((mount) => mount.mountpoint === mountpoint);
    if (!served) return undefined;
    if (served.digest !== layer.digest) {
      this.log.warn(
        { mountpoint, served: served.digest, want: layer.digest },
        'fuse manager serves another layer here; mounting again',
      );
      return undefined;
    }
    return this.handle(layer, mountpoint);
  }

  /** The manager's live mounts (it drops the ones gone from the kernel first), listed at most once a second. */
  private mounts(): Promise<ManagedMount[]> {
    if (!this.listing || Date.now() - this.listing.at > LISTING_TTL_MS) {
      const mounts = this.client.list();
      this.listing = { at: Date.now(), mounts };
      mounts.catch(() => {
        if (this.listing?.mounts === mounts) this.listing = undefined;
      });
    }
    return this.listing.mounts;
  }

  /**
   * Whether `layer` is still served at `mountpoint`: a FUSE mount there in /proc/self/mountinfo (the manager
   * runs in this mount namespace) and the manager still serving that layer there. Throws when the manager
   * does not answer.
   */
  private async serves(layer: RemoteLayerRecord, mountpoint: string): Promise<boolean> {
    const mounted = readMountInfo().some(
      (mount) => mount.mountpoint === mountpoint && isFuseType(mount.fstype),
    );
    if (!mounted) return false;
    return (await this.mounts()).some(
      (mount) => mount.mountpoint === mountpoint && mount.digest === layer.digest,
    );
  }

  private handle(layer: RemoteLayerRecord, mountpoint: string): RemoteMount {
    return {
      persistent: true,
      check: () => this.serves(layer, mountpoint),
      unmount: async () => {
        this.listing = undefined;
        await this.client.release(mountpoint);
      },
    };
  }
}
