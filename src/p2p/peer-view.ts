import { Bitmap } from '../cache/bitmap.js';
import type { BlobCache } from '../cache/blob-cache.js';
import type { BlobRef } from '../fetch/types.js';
import type { LookupAnswer } from './tracker-state.js';
import type { Units } from './unit-layout.js';

export interface Holder {
  id: string;
  address: string;
  zone: string;
  load: number;
  bits: Bitmap;
  failures: number;
  /** Units the seed is sending this holder (not announced yet); undefined when none. */
  pending?: Bitmap;
}

/**
 * What this node knows about one blob in the P2P tier: its own cache (what it announces) and the holders
 * the tracker named in its last answer (what it can ask for).
 */
export class PeerView {
  holders: Holder[] = [];
  /** What the blob's seed holds, as of the last answer (undefined: nothing known). */
  seedBits: Bitmap | undefined;
  /** Other peers in the swarm, as of the last answer. */
  swarm = 0;
  /** What the fill planner did for this blob (preheat --json, debugging). */
  readonly fill = {
    plans: 0,
    waits: 0,
    peerRuns: 0,
    seedRuns: 0,
    /** Runs the seed handed back, fetched from the registry by this node. */
    originRuns: 0,
    deferred: 0,
    busy: 0,
    failed: 0,
  };
  /** A tracker answer arrived at least once. */
  answered = false;
  /** Units the seed deferred → until when (ms) they count as on their way elsewhere. */
  private readonly deferred = new Map<number, number>();
  /** rarities() of the last holder list and usable set, per slot (see there). */
  private readonly rarityFor: ({ holders: Holder[]; mask: Uint8Array; counts: Uint16Array } | undefined)[] =
    [];
  /** pendingUnion() of the last holder list. */
  private pendingFor: { holders: Holder[]; bits: Bitmap } | undefined;
  lastLookup = -Infinity;
  looking: Promise<void> | undefined;
  /** A lookup the next announce carries (P2pNode.lookup); cleared when an answer came with it. */
  lookupDue = false;
  /** The units announced so far to `announcedTo` (undefined: the next announce is a full one). */
  announced: Uint8Array | undefined;
  announcedTo: string | undefined;
  beats = 0;
  /** Timer of an announce due soon (new units), and removal of the cache listener that sets it. */
  soon: unknown;
  /** The announce in progress (announces of a blob go out one at a time). */
  announcing: Promise<void> = Promise.resolve();
  unlisten: (() => void) | undefined;

  constructor(
    readonly blob: BlobRef,
    readonly layout: Units,
    readonly cache: BlobCache,
  ) {}

  /** Takes a tracker's lookup answer. */
  setHolders(a: Pick<LookupAnswer, 'holders' | 'units'> & Partial<LookupAnswer>): void {
    if (a.units && a.units !== this.layout.units) return;
    const n = this.layout.units;
    this.holders = (a.holders ?? []).map((h) => ({
      id: h.peer_id,
      address: h.address,
      zone: h.zone,
      load: h.load,
      failures: h.failures,
      bits: Bitmap.fromBits(h.bitmap, n),
      pending: h.pending?.length ? Bitmap.fromBits(h.pending, n) : undefined,
    }));
    this.seedBits = a.seed_bitmap?.length ? Bitmap.fromBits(a.seed_bitmap, n) : undefined;
    this.answered = true;
    this.swarm = a.peers ?? this.holders.length;
  }

  /**
   * The units on their way to other holders now (the seed is sending them, or it deferred this node's
   * request for them): not asked of the seed. One bitmap per plan, so a plan tests a bit per unit.
   */
  elsewhere(now = Date.now()): Bitmap {
    const union = this.pendingUnion();
    if (!this.deferred.size) return union;
    const out = union.clone();
    for (const [u, until] of this.deferred) {
      if (until <= now) this.deferred.delete(u);
      else if (u < out.size) out.set(u);
    }
    return out;
  }

  /**
   * The units the seed is sending any holder (union of their pending bitmaps), computed once per holder list:
   * the planner asks for every missing unit, and a scan of every holder per unit is holders × units per plan.
   */
  private pendingUnion(): Bitmap {
    const hs = this.holders;
    if (this.pendingFor?.holders === hs) return this.pendingFor.bits;
    const bits = new Bitmap(this.layout.units);
    for (const h of hs) {
      const p = h.pending?.bits;
      if (!p) continue;
      const n = Math.min(p.length, bits.bits.length);
      for (let i = 0; i < n; i++) bits.bits[i]! |= p[i]!;
    }
    this.pendingFor = { holders: hs, bits };
    return bits;
  }

  /** The seed deferred these units (on their way to another node): not asked for again for `ms`. */
  defer(units: readonly number[], ms: number, now = Date.now()): void {
    for (const u of units) this.deferred.set(u, now + ms);
  }

  /** Holders of every unit in [first, last]. */
  holdersOf(first: number, last: number): Holder[] {
    return this.holders.filter((h) => {
      for (let u = first; u <= last; u++) if (!h.bits.has(u)) return false;
      return true;
    });
  }

  /**
   * For every unit, how many known holders (that `usable` accepts) have it (0: only the seed has it, or
   * nobody yet). The planner asks each time it plans a run; the counts are computed from scratch only for a
   * new holder list (a tracker answer, a holder dropped); a holder turning usable or not (isolated, busy,
   * back) adds or takes away its own units, which in a large swarm happens on most plans. The array is
   * shared and changes in place: read it, do not keep it. Each `slot` keeps its own counts (the planner
   * counts holders it may ask now, and holders it will be able to ask soon).
   */
  rarities(usable?: (h: Holder) => boolean, slot = 0): Uint16Array {
    const hs = this.holders;
    const r = this.rarityFor[slot];
    if (r && r.holders === hs) {
      // same holders: only those whose usability changed (isolated, busy, back) move the counts
      for (let j = 0; j < hs.length; j++) {
        const on = !usable || usable(hs[j]!) ? 1 : 0;
        if (on === r.mask[j]) continue;
        r.mask[j] = on;
        addBits(r.counts, hs[j]!.bits.bits, on ? 1 : -1);
      }
      return r.counts;
    }
    const mask = new Uint8Array(hs.length);
    const counts = new Uint16Array(this.layout.units);
    for (let j = 0; j < hs.length; j++) {
      mask[j] = !usable || usable(hs[j]!) ? 1 : 0;
      if (mask[j]) addBits(counts, hs[j]!.bits.bits, 1);
    }
    this.rarityFor[slot] = { holders: hs, mask, counts };
    return counts;
  }

  /** The units this node misses, as a bitmap of the blob's units (what a lookup asks holders of). */
  missing(): Uint8Array {
    const have = this.cache.snapshot();
    const n = this.layout.units;
    const out = new Uint8Array(Math.ceil(n / 8));
    for (let i = 0; i < out.length; i++) out[i] = ~(have[i] ?? 0) & 0xff;
    if (n % 8) out[out.length - 1]! &= (1 << (n % 8)) - 1;
    return out;
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

/** Adds `by` (1 or -1) to counts[u] for every unit u set in bits (units past counts' length ignored). */
function addBits(counts: Uint16Array, bits: Uint8Array, by: number): void {
  const n = counts.length;
  const end = Math.min(bits.length, Math.ceil(n / 8));
  for (let i = 0; i < end; i++) {
    let b = bits[i]!;
    while (b) {
      const low = b & -b;
      const u = i * 8 + (31 - Math.clz32(low));
      if (u < n) counts[u] = counts[u]! + by;
      b ^= low;
    }
  }
}
