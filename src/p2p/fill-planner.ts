import type { BlobFetcher } from '../fetch/blob-fetcher.js';
import { Priority } from '../fetch/types.js';
import type { PeerView } from './peer-view.js';

export interface P2pFillOptions {
  /** Largest run (stored bytes). Default 4 MiB. */
  maxRunBytes?: number;
  /** Runs in flight at once. Default 4. */
  concurrency?: number;
  /** Asks the tracker for fresh holders (rate-limited by the caller). */
  refresh?: (view: PeerView) => Promise<void>;
  signal?: AbortSignal;
}

/**
 * The next run to fetch: the rarest missing unit (fewest known holders; random among equals, so that nodes
 * starting together fetch different blocks from the seed and then trade them), extended over the following
 * missing units that a common holder has (or that no peer has: the seed's), up to maxRunBytes.
 */
export function nextRun(
  view: PeerView,
  claimed: Set<number>,
  maxRunBytes: number,
  rand = Math.random,
): number[] | undefined {
  const { cache, layout } = view;
  let best = -1;
  let bestRarity = Infinity;
  let ties = 0;
  for (let u = cache.nextMissing(0); u >= 0; u = cache.nextMissing(u + 1)) {
    if (claimed.has(u)) continue;
    const r = view.rarity(u);
    if (r < bestRarity) {
      best = u;
      bestRarity = r;
      ties = 1;
    } else if (r === bestRarity && rand() * ++ties < 1) best = u;
  }
  if (best < 0) return undefined;
  // runs only the seed has are kept short, so that they reach the other nodes quickly
  if (bestRarity === 0) maxRunBytes = Math.max(1, maxRunBytes >> 2);
  let holders = view.holders.filter((h) => h.bits.has(best));
  const run = [best];
  let bytes = layout.length(best);
  for (let v = best + 1; v < layout.units && !cache.has(v) && !claimed.has(v); v++) {
    const len = layout.length(v);
    if (bytes + len > maxRunBytes) break;
    if (bestRarity === 0) {
      if (view.rarity(v) !== 0) break;
    } else {
      const still = holders.filter((h) => h.bits.has(v));
      if (!still.length) break;
      holders = still;
    }
    run.push(v);
    bytes += len;
  }
  return run;
}

/**
 * Fills a blob rarest-first through the fetcher (peers, then seed, then registry; every block verified).
 * Returns the number of runs that failed; the caller finishes with the fetcher's own fill, which retries
 * and checks the blob digest.
 */
export async function p2pFill(
  view: PeerView,
  fetcher: BlobFetcher,
  opts: P2pFillOptions = {},
): Promise<number> {
  const maxRun = opts.maxRunBytes ?? 4 * 1024 * 1024;
  const claimed = new Set<number>();
  let failures = 0;
  const worker = async () => {
    for (;;) {
      opts.signal?.throwIfAborted();
      await opts.refresh?.(view);
      const run = nextRun(view, claimed, maxRun);
      if (!run) return;
      for (const u of run) claimed.add(u);
      try {
        await fetcher.units(run, Priority.Fill, opts.signal);
      } catch {
        opts.signal?.throwIfAborted();
        failures++;
        if (failures > 8 * (opts.concurrency ?? 4)) return;
      } finally {
        for (const u of run) claimed.delete(u);
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 4 }, worker));
  return failures;
}
