import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import type { CacheManager } from '../cache/cache-manager.js';
import type { P2pNode } from '../p2p/p2p-node.js';
import { ClusterBlobs, type BlobHolder } from './cluster-blobs.js';
import { ManifestRelay } from './manifest-relay.js';
import { clusterManifests } from './cluster-manifests.js';
import { resolveClusterToken } from '../p2p/auth.js';
import { MirrorServer } from './mirror-server.js';
import { relayFor, upstreamFor } from './relay-config.js';

/**
 * Starts the registry mirror when `mirror.listen` is set; the caller closes it. Given the node's cache
 * (and P2P tier), blobs go through them (cluster-blobs.ts); else every blob is streamed from the registry.
 */
export async function startMirror(
  cfg: Config,
  log: Logger,
  node?: { caches: CacheManager; p2p?: P2pNode },
  /**
   * A seed's: its manifest relay (seed-manifests.ts) and its files (seed-mirror-blobs.ts), which its own
   * mirror answers from too.
   */
  seed?: { manifests: ManifestRelay; blobs?: BlobHolder },
): Promise<MirrorServer | undefined> {
  const listen = cfg.mirror.listen;
  if (!listen || listen === 'off') return undefined;
  const upstream = upstreamFor(cfg, log);
  const blobs = node && new ClusterBlobs({ ...node, config: cfg, logger: log });
  const p2p = node?.p2p;
  // a node with seeds asks them for manifests first (cluster-manifests.ts)
  const via =
    p2p && cfg.p2p.seeds.length && resolveClusterToken(cfg.p2p)
      ? clusterManifests(() => p2p.seedAccess, log.child({ component: 'mirror' }))
      : undefined;
  // a full cache takes back what is held without a reader: first what was there before (preheated layers),
  // then blobs lingering in the swarm after their last pull (until the mirror closes)
  const before = node?.caches.onFull;
  if (blobs) node.caches.onFull = async () => (await before?.()) === true || blobs.releaseLingering();
  const mirror = new MirrorServer({
    listen,
    upstream,
    defaultRegistry: cfg.mirror.defaultRegistry,
    registries: cfg.mirror.registries,
    staleManifestMs: cfg.mirror.staleManifestMs,
    accessTtlMs: cfg.mirror.accessTtlMs,
    manifests: seed?.manifests ?? relayFor(cfg, log, upstream, via),
    pieceTimeoutMs: cfg.registry.timeoutMs,
    blobs: blobs ?? seed?.blobs,
    logger: log,
    onClose: () => {
      if (blobs) node.caches.onFull = before;
      return upstream.close();
    },
  });
  await mirror.start();
  log.info(
    {
      address: mirror.address,
      blobs: node
        ? node.p2p
          ? 'cache and cluster'
          : 'cache'
        : seed?.blobs
          ? "the seed's files"
          : 'registry',
    },
    'registry mirror listening',
  );
  return mirror;
}
