import type { Bitmap } from '../cache/bitmap.js';
import type { BlobCache } from '../cache/blob-cache.js';
import type { BlobRef } from '../fetch/types.js';
import { bitmapFrom, type HolderMsg } from './tracker-state.js';
import type { UnitLayout } from './unit-layout.js';

export interface Holder {
  id: string;
  address: string;
  zone: string;
  load: number;
  bits: Bitmap;
  failures: number;
}

/**
 * What this node knows about one blob in the P2P tier: its own cache (what it announces) and the holders
 * the tracker named in its last answer (what it can ask for).
 */
export class PeerView {
  holders: Holder[] = [];
  lastLookup = -Infinity;
  looking: Promise<void> | undefined;
  /** The units announced so far to `announcedTo` (undefined: the next announce is a full one). */
  announced: Uint8Array | undefined;
  announcedTo: string | undefined;
  refs = 1;
  beats = 0;

  constructor(
    readonly blob: BlobRef,
    readonly layout: UnitLayout,
    readonly cache: BlobCache,
  ) {}

  setHolders(msgs: HolderMsg[], units: number): void {
    if (units && units !== this.layout.units) return;
    this.holders = msgs.map((h) => ({
      id: h.peer_id,
      address: h.address,
      zone: h.zone,
      load: h.load,
      failures: h.failures,
      bits: bitmapFrom(h.bitmap, this.layout.units),
    }));
  }

  /** Holders of every unit in [first, last]. */
  holdersOf(first: number, last: number): Holder[] {
    return this.holders.filter((h) => {
      for (let u = first; u <= last; u++) if (!h.bits.has(u)) return false;
      return true;
    });
  }

  /** How many known holders have unit u (0: only the seed has it, or nobody yet). */
  rarity(u: number): number {
    let n = 0;
    for (const h of this.holders) if (h.bits.has(u)) n++;
    return n;
  }

  /** Units held now that were not announced yet (all of them when a full announce is due). */
  delta(): { full: boolean; bitmap: Uint8Array; added: number[] } {
    const now = this.cache.snapshot();
    const prev = this.announced;
    if (!prev || prev.length !== now.length) return { full: true, bitmap: now, added: [] };
    const added: number[] = [];
    for (let i = 0; i < now.length; i++) {
      const diff = now[i]! & ~prev[i]!;
      if (diff) for (let b = 0; b < 8; b++) if (diff & (1 << b)) added.push(i * 8 + b);
    }
    return { full: false, bitmap: now, added };
  }
}
