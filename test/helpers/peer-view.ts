import type { Toc } from '../../src/blob/toc.js';
import type { BlobCache } from '../../src/cache/blob-cache.js';
import { PeerView } from '../../src/p2p/peer-view.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';

const KIB = 1024;

/**
 * A PeerView of a blob of `blocks` blocks of 64 KiB (plus a 1 KiB TOC unit, unit `blocks`) over a cache that
 * holds the units in `have` (the caller may add to it as a fetch stores units).
 */
export function viewOf(blocks: number, have: Set<number> = new Set()): PeerView {
  const toc = { blockCount: blocks, blockOffset: (i: number) => i * 64 * KIB } as unknown as Toc;
  const size = blocks * 64 * KIB + KIB;
  const cache = {
    has: (u: number) => have.has(u),
    nextMissing: (from: number) => {
      for (let u = from; u <= blocks; u++) if (!have.has(u)) return u;
      return -1;
    },
  } as unknown as BlobCache;
  return new PeerView({ digest: 'sha256:' + '1'.repeat(64), size }, new UnitLayout(toc, size), cache);
}
