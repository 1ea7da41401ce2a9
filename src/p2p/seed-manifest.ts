import { DfError } from '../errors.js';
import { rankSeeds } from './rendezvous.js';
import type { SeedAccess } from './seed-file-table.js';

/** A seed's answer to a manifest request, as it came (http-block-client.ts manifest()). */
export interface SeedManifestReply {
  seed: string;
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/**
 * Asks the seeds for a manifest (`target`: the engine's pull path, `/v2/...?ns=REGISTRY`) with the engine's
 * credentials: the first seed by rendezvous over `key` (registry/repository, so that every node asks the
 * same seed and its memory answers them all) that answers, whatever it answers; a seed that cannot be
 * reached is isolated and the next one asked. Throws the last failure when none could be asked (none
 * configured, all down or isolated).
 */
export async function seedManifest(
  deps: SeedAccess,
  key: string,
  target: string,
  engine: { authorization?: string; accept?: string },
  maxBytes: number,
  signal: AbortSignal,
): Promise<SeedManifestReply> {
  let last: unknown = new DfError('FAILED_PRECONDITION', 'no seed is configured (p2p.seeds)');
  for (const seed of rankSeeds(key, deps.seeds)) {
    if (deps.isolation.isolated(seed)) continue;
    try {
      return { seed, ...(await deps.http.manifest(seed, target, engine, maxBytes, signal)) };
    } catch (err) {
      if (signal.aborted) throw err;
      const e = DfError.from(err);
      deps.isolation.fail(seed, `${e.code}: ${e.message.slice(0, 300)}`);
      last = e;
    }
  }
  throw last;
}
