import type { Toc } from '../blob/toc.js';
import type { BlobCache } from '../cache/blob-cache.js';
import type { FillPlanner } from '../fetch/background-fill.js';
import type { BlobRef } from '../fetch/types.js';

/** A layer's place in the P2P tier while it is open. */
export interface SwarmMembership {
  /** Background fill's first pass through the swarm (rarest first from peers, the seed's share). */
  readonly planner?: FillPlanner;
  /** What that planner did so far, by counter (a live view). */
  readonly fillCounters?: Readonly<Record<string, number>>;
  /** Stops serving and announcing the layer's units; resolves when the tracker was told or gave up. */
  leave(): Promise<void>;
  /**
   * Settles when the first announce was answered or failed: until then the seed does not know the node, so
   * it cannot tell others that a unit is on its way to it (and defer their requests for it).
   */
  readonly announced?: Promise<void>;
}

/**
 * The seam between a layer and the P2P tier (implemented by src/p2p): a layer joins when its TOC is
 * verified and leaves before its cache closes, so that nothing serves or announces a closed cache.
 */
export interface LayerSwarm {
  /**
   * Optional: the layer is about to load its TOC. The P2P tier may open its connection to the blob's
   * tracker meanwhile, so that the first announce and lookup after join() do not wait for it.
   */
  prepare?(blob: BlobRef): void;
  join(layer: { blob: BlobRef; toc: Toc; cache: BlobCache }): SwarmMembership;
}
