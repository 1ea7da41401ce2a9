import { createHash } from 'node:crypto';
import { DfError } from '../errors.js';

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

/**
 * Listens on `listen` (a seed's blocks) and starts its tracker on the next port. Port 0 asks for any free
 * port: when the one picked has its neighbour taken, another pair is tried (bounded) instead of failing.
 * A fixed port whose neighbour is taken fails with the tracker's "is in use" for the operator to fix.
 */
export async function listenPair<T extends { address: string }>(
  listen: string,
  blocks: { listen(address: string): Promise<string>; close(): Promise<void> },
  startTracker: (address: string) => Promise<T>,
): Promise<{ blocks: string; tracker: T }> {
  const anyPort = /:0$/.test(listen);
  for (let attempt = 1; ; attempt++) {
    const address = await blocks.listen(listen);
    try {
      return { blocks: address, tracker: await startTracker(trackerAddress(address)) };
    } catch (err) {
      await blocks.close();
      if (!anyPort || attempt >= 20 || !/is in use/.test(DfError.from(err).message)) throw err;
    }
  }
}
