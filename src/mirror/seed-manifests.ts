import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import { isBusy } from '../fetch/types.js';
import type { Logger } from '../log.js';
import {
  MANIFEST_AGE_HEADER,
  MANIFEST_FROM_HEADER,
  MANIFEST_STALE_HEADER,
  type ManifestWireAnswer,
  type SeedManifestProvider,
} from '../p2p/manifest-request.js';
import { ManifestRelay } from './manifest-relay.js';
import { parseMirrorRoute } from './route.js';
import { relayFor, upstreamFor } from './relay-config.js';

const text = (status: number, message: string): ManifestWireAnswer => ({
  status,
  headers: { 'content-type': 'text/plain' },
  body: Buffer.from(message),
});

/**
 * A seed's answer to its nodes' manifest requests (`GET /manifests/v2/...` on the P2P port, after the cluster
 * token): the relay's answer for the engine's own Authorization and Accept, which the seed fetches from the
 * registry (only from registries p2p.seedRegistries allows) and keeps in memory and on disk. Every node that
 * asks with the same credential within mirror.manifestTtlMs gets the one registry answer, and while the
 * registry is down a node that never fetched a manifest still gets the seed's copy (same credential, within
 * mirror.staleManifestMs). 200 with the manifest (its age, and whether stale); the registry's own refusal
 * marked as such; else the seed's: 400/404 for a malformed path, 403 for a registry not allowed, 429 when
 * busy, 502 when the registry cannot be reached and no copy is kept or it sent other content.
 */
export function seedManifestAnswer(
  relay: ManifestRelay,
  allowed: (registry: string) => boolean,
  now: () => number = Date.now,
): SeedManifestProvider['answer'] {
  return async (target, headers, signal) => {
    let route;
    try {
      route = parseMirrorRoute(target, '');
    } catch (err) {
      const e = DfError.from(err);
      return text(e.code === 'NOT_FOUND' ? 404 : 400, e.message);
    }
    if (route.kind !== 'manifest') return text(404, 'not a manifest path');
    const { registry, repository } = route.ref;
    if (!allowed(registry))
      return text(403, `this seed does not fetch from ${registry}: it is not in p2p.seedRegistries`);
    try {
      const a = await relay.get(
        {
          registry,
          repository,
          reference: route.reference,
          ...(headers.authorization !== undefined && { authorization: headers.authorization }),
          ...(headers.accept !== undefined && { accept: headers.accept }),
        },
        signal,
      );
      if (a.kind === 'refused')
        return {
          status: a.status,
          headers: { ...a.headers, [MANIFEST_FROM_HEADER]: 'registry' },
          body: a.body,
        };
      const m = a.manifest;
      return {
        status: 200,
        headers: {
          'content-type': m.contentType,
          'docker-content-digest': m.digest,
          [MANIFEST_AGE_HEADER]: String(Math.max(0, Math.round(now() - m.storedAt))),
          ...(a.from === 'stale' && { [MANIFEST_STALE_HEADER]: '1' }),
        },
        body: m.body,
      };
    } catch (err) {
      const e = DfError.from(err);
      if (isBusy(e))
        return { ...text(429, e.message), headers: { 'content-type': 'text/plain', 'retry-after': '1' } };
      return text(502, e.message);
    }
  };
}

/**
 * The seed's manifest relay from its configuration: the registry with the engine's credentials (and the
 * seed's registry settings), manifests kept on disk beside its mirror's (`<cache.dir>/mirror-manifests`,
 * mirror.manifestStoreBytes), mirror.manifestTtlMs and staleManifestMs. The seed's own mirror, when
 * mirror.listen is set, answers from the same relay (`relay`).
 */
export function startSeedManifests(
  cfg: Config,
  log: Logger,
  allowed: (registry: string) => boolean,
): SeedManifestProvider & { relay: ManifestRelay } {
  const upstream = upstreamFor(cfg, log);
  const relay = relayFor(cfg, log, upstream);
  return {
    relay,
    answer: seedManifestAnswer(relay, allowed),
    init: () => relay.init(),
    close: async () => {
      relay.close();
      await upstream.close();
    },
  };
}
