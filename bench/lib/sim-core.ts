/**
 * The core of the P2P simulation (bench/lib/p2p-sim.ts): a seeded random source, the event queue, hosts'
 * links and the flows over them, and the bitmap a simulated host holds.
 */
import { Bitmap } from '../../src/cache/bitmap.js';

/** A binary min-heap under `less`. */
export class MinHeap<T> {
  private readonly h: T[] = [];
  constructor(private readonly less: (a: T, b: T) => boolean) {}
  get size(): number {
    return this.h.length;
  }
  push(x: T): void {
    const h = this.h;
    h.push(x);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }
  pop(): T | undefined {
    const h = this.h;
    if (!h.length) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
        if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
}

/** Events by time, then by insertion order. */
export class EventQueue {
  private readonly heap = new MinHeap<{ t: number; seq: number; fn: () => void }>(
    (a, b) => a.t < b.t || (a.t === b.t && a.seq < b.seq),
  );
  private seq = 0;
  push(t: number, fn: () => void): void {
    this.heap.push({ t, seq: this.seq++, fn });
  }
  pop(): { t: number; fn: () => void } | undefined {
    return this.heap.pop();
  }
}

export interface Endpoint {
  name: string;
  up: number; // bytes per ms
  down: number;
  ups: Set<Flow>;
  downs: Set<Flow>;
  /** CPU s per byte this host spends sending. */
  sendCost: number;
  /** The most flows it sent at once. */
  peakUps: number;
}

export interface Flow {
  src: Endpoint;
  dst: Endpoint;
  remaining: number;
  rate: number;
  done: () => void;
  /** Told after each step the flow did not end in, with the bytes still to come. */
  progress?: (remaining: number) => void;
}

/**
 * Max-min fair rates (bytes per ms) of `flows` over their endpoints' upload and download capacities, by
 * progressive filling: the link whose equal share is smallest is saturated first, its flows frozen at that
 * share, and so on.
 */
export function maxMinRates(flows: Iterable<Flow>): Map<Flow, number> {
  const rem = new Map<Endpoint, { up: number; upN: number; down: number; downN: number }>();
  const res = (e: Endpoint) => {
    let r = rem.get(e);
    if (!r) rem.set(e, (r = { up: e.up, upN: 0, down: e.down, downN: 0 }));
    return r;
  };
  for (const f of flows) {
    res(f.src).upN++;
    res(f.dst).downN++;
  }
  // a heap of (share, endpoint, direction); shares only grow as flows freeze, so stale entries are skipped
  const heap = new MinHeap<{ share: number; e: Endpoint; up: boolean }>((x, y) => x.share < y.share);
  for (const [e, r] of rem) {
    if (r.upN) heap.push({ share: r.up / r.upN, e, up: true });
    if (r.downN) heap.push({ share: r.down / r.downN, e, up: false });
  }
  const frozen = new Map<Flow, number>();
  for (let x = heap.pop(); x; x = heap.pop()) {
    const r = rem.get(x.e)!;
    const n = x.up ? r.upN : r.downN;
    if (!n) continue;
    const share = (x.up ? r.up : r.down) / n;
    if (share > x.share + 1e-12) {
      heap.push({ share, e: x.e, up: x.up });
      continue;
    }
    for (const f of x.up ? x.e.ups : x.e.downs) {
      if (frozen.has(f)) continue;
      frozen.set(f, share);
      const s2 = rem.get(f.src)!;
      const d2 = rem.get(f.dst)!;
      s2.up -= share;
      s2.upN--;
      d2.down -= share;
      d2.downN--;
      const o = x.up ? d2 : s2;
      const on = x.up ? o.downN : o.upN;
      if (on > 0) heap.push({ share: (x.up ? o.down : o.up) / on, e: x.up ? f.dst : f.src, up: !x.up });
    }
  }
  return frozen;
}

/**
 * A run's arrival as RunWriter stores it (src/fetch/run-writer.ts): the returned progress callback of the
 * run's flow is told the bytes still to come after each step and hands `store` the units fully arrived since
 * the last call once `minBytes` of them are pending; what is left is stored at the run's end by the caller.
 * Undefined when `minBytes` is 0 (units only at the run's end).
 */
export function midRunStore(
  units: readonly number[],
  length: (unit: number) => number,
  bytes: number,
  minBytes: number,
  store: (units: number[]) => void,
): ((remaining: number) => void) | undefined {
  if (minBytes <= 0) return undefined;
  // units[0, stored) are stored, units[stored, arrived) have arrived: `pending` bytes, ending at `end`
  let stored = 0;
  let arrived = 0;
  let end = 0;
  let pending = 0;
  return (remaining) => {
    for (; arrived < units.length && end + length(units[arrived]!) <= bytes - remaining; arrived++) {
      end += length(units[arrived]!);
      pending += length(units[arrived]!);
    }
    if (pending < minBytes) return;
    store(units.slice(stored, arrived));
    stored = arrived;
    pending = 0;
  };
}

/** mulberry32: a small seeded generator (runs are repeatable). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** The cache side of a simulated node: what PeerView and planRun read (a bitmap of units). */
export class SimCache {
  readonly bits: Bitmap;
  constructor(units: number) {
    this.bits = new Bitmap(units);
  }
  has(u: number): boolean {
    return this.bits.has(u);
  }
  nextMissing(from = 0): number {
    return this.bits.nextClear(from);
  }
  snapshot(): Uint8Array {
    return this.bits.bits.slice();
  }
  get isComplete(): boolean {
    return this.bits.full;
  }
}
