import { createHash } from 'node:crypto';

/**
 * Rendezvous (highest random weight) hashing: every node ranks the seeds for a blob the same way without a
 * lookup service, and removing a seed moves only the blobs it was first for (each to its next seed).
 */
export function rankSeeds(digest: string, seeds: readonly string[]): string[] {
  return seeds
    .map((seed) => ({ seed, w: weight(seed, digest) }))
    .sort((a, b) => (a.w === b.w ? (a.seed < b.seed ? -1 : 1) : a.w > b.w ? -1 : 1))
    .map((x) => x.seed);
}

function weight(seed: string, digest: string): bigint {
  return createHash('sha256').update(seed).update('\n').update(digest).digest().readBigUInt64BE(0);
}

/** `host:port` of the tracker of a seed whose data port is `host:port`: the next port. */
export function trackerAddress(seed: string): string {
  const i = seed.lastIndexOf(':');
  return `${seed.slice(0, i)}:${Number(seed.slice(i + 1)) + 1}`;
}
