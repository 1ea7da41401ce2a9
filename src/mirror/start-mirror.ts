import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { CacheManager } from '../cache/cache-manager.js';
import type { P2pNode } from '../p2p/p2p-node.js';
import { join } from 'node:path';
import { ClusterBlobs } from './cluster-blobs.js';
import { ManifestStore } from './manifest-store.js';
import { MirrorServer } from './mirror-server.js';
import { Upstream } from './upstream.js';

/**
 * Starts the registry mirror when `mirror.listen` is set; the caller closes it. Given the node's cache
 * (and P2P tier), blobs go through them (cluster-blobs.ts); else every blob is streamed from the registry.
 */
export async function startMirror(
  cfg: Config,
  log: Logger,
  node?: { caches: CacheManager; p2p?: P2pNode },
): Promise<MirrorServer | undefined> {
  const listen = cfg.mirror.listen;
  if (!listen || listen === 'off') return undefined;
  const upstream = new Upstream({
    plainHttp: cfg.registry.plainHttp,
    insecure: cfg.registry.insecure,
    timeoutMs: cfg.registry.timeoutMs,
  });
  const blobs = node && new ClusterBlobs({ ...node, config: cfg, logger: log });
  // a full cache takes back what is held without a reader: first what was there before (preheated layers),
  // then blobs lingering in the swarm after their last pull (until the mirror closes)
  const before = node?.caches.onFull;
  if (blobs) node.caches.onFull = async () => (await before?.()) === true || blobs.releaseLingering();
  const mirror = new MirrorServer({
    listen,
    upstream,
    defaultRegistry: cfg.mirror.defaultRegistry,
    registries: cfg.mirror.registries,
    manifestTtlMs: cfg.mirror.manifestTtlMs,
    staleManifestMs: cfg.mirror.staleManifestMs,
    accessTtlMs: cfg.mirror.accessTtlMs,
    // in the cache dir of the process (node or seed): answered after a restart while the registry is down
    manifestStore: cfg.mirror.manifestStoreBytes
      ? new ManifestStore({
          dir: join(cfg.cache.dir, 'mirror-manifests'),
          maxBytes: cfg.mirror.manifestStoreBytes,
          logger: log,
        })
      : undefined,
    pieceTimeoutMs: cfg.registry.timeoutMs,
    blobs,
    logger: log,
    onClose: () => {
      if (blobs) node.caches.onFull = before;
      return upstream.close();
    },
  });
  await mirror.start();
  log.info(
    { address: mirror.address, blobs: node ? (node.p2p ? 'cache and cluster' : 'cache') : 'registry' },
    'registry mirror listening',
  );
  return mirror;
}
