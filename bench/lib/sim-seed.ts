/**
 * The seed of the P2P simulation (bench/lib/p2p-sim.ts) filling the blob from the registry: in order,
 * SEED_FETCHES runs of SEED_FETCH_BYTES at a time (the real seed verifies and forwards each block as it
 * streams in, which short runs approximate), fetching units a node asked for first. A node's run of units
 * the seed does not hold starts when its first unit is in (cut-through: the seed forwards each block as it
 * arrives; its registry link is at least as fast as its share of its upload here, so the forwarded flow
 * does not overtake the arriving one).
 */
import type { Bitmap } from '../../src/cache/bitmap.js';

/** The seed's registry fetches: this many at once, of this many bytes (short: blocks become available as they stream). */
const SEED_FETCHES = 8;
const SEED_FETCH_BYTES = 256 << 10;

export class SimSeedFill {
  /** Bytes fetched from the registry so far. */
  registryBytes = 0;
  private readonly waiters: { units: number[]; go: () => void }[] = [];
  private readonly fetching = new Set<number>();
  private readonly urgent: number[] = [];
  private fills = 0;
  private next = 0;

  constructor(
    private readonly o: {
      units: number;
      /** Bytes of unit `u`. */
      length: (u: number) => number;
      /** What the seed holds: set as units arrive. */
      bits: Bitmap;
      /** Fetches `bytes` from the registry over the simulated links, then calls `done`. */
      fetch: (bytes: number, done: () => void) => void;
    },
  ) {}

  /** Calls `go` once the seed holds `units[0]` (now, or once fetched: `units` it lacks are fetched first). */
  whenHeld(units: number[], go: () => void): void {
    const { bits } = this.o;
    if (bits.has(units[0]!)) return go();
    for (const u of units) if (!bits.has(u)) this.urgent.push(u);
    this.waiters.push({ units, go });
    this.pump();
  }

  /** Starts registry fetches up to SEED_FETCHES at once. */
  pump(): void {
    const { units, bits, length } = this.o;
    while (this.fills < SEED_FETCHES) {
      let first = -1;
      while (this.urgent.length && first < 0) {
        const u = this.urgent.shift()!;
        if (!bits.has(u) && !this.fetching.has(u)) first = u;
      }
      if (first < 0) {
        while (this.next < units && (bits.has(this.next) || this.fetching.has(this.next))) this.next++;
        if (this.next >= units) return;
        first = this.next;
      }
      const run: number[] = [];
      let bytes = 0;
      for (let u = first; u < units && !bits.has(u) && !this.fetching.has(u); u++) {
        if (bytes + length(u) > SEED_FETCH_BYTES && run.length) break;
        run.push(u);
        bytes += length(u);
      }
      for (const u of run) this.fetching.add(u);
      this.fills++;
      this.registryBytes += bytes;
      this.o.fetch(bytes, () => {
        this.fills--;
        for (const u of run) {
          this.fetching.delete(u);
          bits.set(u);
        }
        for (let i = this.waiters.length - 1; i >= 0; i--) {
          const w = this.waiters[i]!;
          if (bits.has(w.units[0]!)) {
            this.waiters.splice(i, 1);
            w.go();
          }
        }
        this.pump();
      });
    }
  }
}
