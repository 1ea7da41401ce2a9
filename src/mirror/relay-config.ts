import { join } from 'node:path';
import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { ManifestRelay, type ManifestVia } from './manifest-relay.js';
import { ManifestStore } from './manifest-store.js';
import { Upstream } from './upstream.js';

/** Requests to registries on engines' behalf, with the registry settings of the configuration. */
export function upstreamFor(cfg: Config, log?: Logger): Upstream {
  return new Upstream({
    plainHttp: cfg.registry.plainHttp,
    insecure: cfg.registry.insecure,
    timeoutMs: cfg.registry.timeoutMs,
    anonymousTokens: cfg.mirror.anonymousTokens,
    ...(log && { logger: log.child({ component: 'mirror-auth' }) }),
  });
}

/**
 * The manifests of a mirror or a seed from the configuration: mirror.manifestTtlMs and staleManifestMs,
 * kept on disk in the process's cache dir (`mirror-manifests/`, mirror.manifestStoreBytes) so that they are
 * answered after a restart while the registry is down; on a node, `via` the cluster's seed first.
 */
export function relayFor(cfg: Config, log: Logger, upstream: Upstream, via?: ManifestVia): ManifestRelay {
  return new ManifestRelay({
    upstream,
    ttlMs: cfg.mirror.manifestTtlMs,
    // what a credential was let read, it reads for as long as a blob's access is remembered
    digestTtlMs: cfg.mirror.accessTtlMs,
    staleMs: cfg.mirror.staleManifestMs,
    store: cfg.mirror.manifestStoreBytes
      ? new ManifestStore({
          dir: join(cfg.cache.dir, 'mirror-manifests'),
          maxBytes: cfg.mirror.manifestStoreBytes,
          logger: log,
        })
      : undefined,
    ...(via && {
      via,
      // the seed may wait for the registry's answer and then for its body
      viaTimeoutMs: 2 * cfg.registry.timeoutMs,
    }),
    logger: log.child({ component: 'manifests' }),
  });
}
