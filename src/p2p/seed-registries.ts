import type { Logger } from '../log.js';
import { canonicalRegistry, parseReference, type ImageReference } from '../registry/reference.js';

/** Whether a seed's p2p.seedRegistries (`host[:port]`, `*` = any) lets it fetch from the registry of `ref`. */
export function registryAllowed(
  seedRegistries: readonly string[],
  ref: Pick<ImageReference, 'registry'>,
): boolean {
  const list = seedRegistries.map(canonicalRegistry);
  return list.includes('*') || list.includes(canonicalRegistry(ref.registry));
}

/**
 * The repository of a node's hint when p2p.seedRegistries allows its registry, else undefined (logged):
 * a seed fetches with its own credentials only from registries its operator chose, never from a host a
 * cluster member names.
 */
export function allowedRepo(
  seedRegistries: readonly string[],
  digest: string,
  repo: string,
  log: Logger,
): ImageReference | undefined {
  let ref: ImageReference;
  try {
    ref = parseReference(repo);
  } catch (err) {
    log.warn({ err, digest, repo }, 'seed refuses a blob: the repository of the request is not valid');
    return undefined;
  }
  if (registryAllowed(seedRegistries, ref)) return ref;
  log.warn(
    { digest, repo: ref.repoString, registry: ref.registry },
    `seed refuses blob ${digest} from ${ref.registry}: not in p2p.seedRegistries ` +
      `(${seedRegistries.join(', ') || 'empty'}); add the registry there to seed its blobs`,
  );
  return undefined;
}
