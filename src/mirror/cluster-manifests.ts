import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { MANIFEST_AGE_HEADER, MANIFEST_FROM_HEADER, MANIFEST_STALE_HEADER } from '../p2p/manifest-request.js';
import { seedManifest } from '../p2p/seed-manifest.js';
import type { SeedAccess } from '../p2p/seed-file-table.js';
import { MAX_MANIFEST, REFUSAL_HEADERS, manifestEntry, type ManifestVia } from './manifest-relay.js';

/** A registry a seed refused (not in its p2p.seedRegistries) is not asked of it again for this long (ms). */
const REFUSED_MS = 60_000;
/** Registries remembered as refused, at most. */
const MAX_REFUSED = 256;

/**
 * A node's mirror asks the cluster's seed for manifests before the registry (ManifestRelay's `via`): the
 * seed fetches them from the registry with the engine's own credentials, answers every node that asks with
 * the same credential from one registry request, and keeps them, so that while the registry is down a node
 * that never pulled an image still gets its manifest (and the registry's yes to that credential, as of the
 * seed's fetch, for the blobs the cluster holds). The seed is trusted as it is for piece tables; a manifest
 * asked for by digest is checked all the same. undefined (the node asks the registry itself) when no seed
 * can be asked, or the seed refuses: the registry is not one it fetches from, busy, its own failure.
 */
export function clusterManifests(
  seeds: () => SeedAccess,
  log: Logger,
  now: () => number = Date.now,
): ManifestVia {
  const refused = new Map<string, number>();
  /** Seeds that refused the cluster token, warned about once each. */
  const warned = new Set<string>();
  return async (q, signal) => {
    const until = refused.get(q.registry);
    if (until !== undefined && until > now()) return undefined;
    const target =
      `/v2/${q.repository}/manifests/${encodeURIComponent(q.reference)}` +
      `?ns=${encodeURIComponent(q.registry)}`;
    let r;
    try {
      r = await seedManifest(seeds(), `${q.registry}/${q.repository}`, target, q, MAX_MANIFEST, signal);
    } catch (err) {
      if (signal.aborted) throw err;
      log.debug({ err: DfError.from(err) }, 'no seed to ask for a manifest: asking the registry');
      return undefined;
    }
    const header = (name: string) => {
      const v = r.headers[name];
      return typeof v === 'string' ? v : undefined;
    };
    if (r.status === 200) {
      const age = Number(header(MANIFEST_AGE_HEADER));
      if (!(age >= 0)) {
        log.warn({ seed: r.seed }, 'a seed answered a manifest without its age: asking the registry');
        return undefined;
      }
      const m = manifestEntry(r.body, header('content-type'), q, now() - age, `seed ${r.seed}`);
      return {
        kind: 'manifest',
        manifest: m,
        from: header(MANIFEST_STALE_HEADER) === '1' ? 'stale' : 'seed',
      };
    }
    if (header(MANIFEST_FROM_HEADER) === 'registry') {
      const h: Record<string, string> = {};
      for (const name of REFUSAL_HEADERS) {
        const v = header(name);
        if (v !== undefined) h[name] = v;
      }
      return { kind: 'refused', status: r.status, headers: h, body: r.body };
    }
    if (r.status === 403 || r.status === 404) {
      // not a registry this seed fetches from (or a seed without the relay): not asked again for a while
      if (refused.size >= MAX_REFUSED) refused.clear();
      refused.set(q.registry, now() + REFUSED_MS);
    }
    const text = r.body.toString('utf8');
    if (r.status === 401 && !warned.has(r.seed) && warned.size < 256) {
      warned.add(r.seed);
      log.warn({ seed: r.seed, text }, 'seed refused the cluster token: check p2p.clusterToken');
    } else
      log.debug(
        { seed: r.seed, status: r.status, text },
        'seed did not answer a manifest: asking the registry',
      );
    return undefined;
  };
}
