import type { ImageReference } from '../registry/reference.js';

/** Whether a seed's p2p.seedRegistries (`host[:port]`, `*` = any) lets it fetch from the registry of `ref`. */
export function registryAllowed(seedRegistries: readonly string[], ref: ImageReference): boolean {
  const list = seedRegistries.map((r) => r.toLowerCase());
  return list.includes('*') || list.includes(ref.registry.toLowerCase());
}
