import { askSeeds, type SeedAccess } from './seed-file-table.js';

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
  // the client throws only when the seed could not be asked: any failure is a seed down
  const { seed, value } = await askSeeds(
    deps,
    key,
    signal,
    (s) => deps.http.manifest(s, target, engine, maxBytes, signal),
    () => true,
  );
  return { seed, ...value };
}
