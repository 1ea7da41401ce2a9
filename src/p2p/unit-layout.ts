import type { Toc } from '../blob/toc.js';

/**
 * The units of a blob as the cache bitmap, the tracker and the peer sources count them: a DFB blob's
 * blocks and TOC unit (UnitLayout), or a raw file's fixed-size pieces (src/mirror/piece-table.ts).
 */
export interface Units {
  readonly units: number;
  readonly size: number;
  offset(u: number): number;
  length(u: number): number;
  /** First and last unit overlapping [offset, offset+length); undefined when out of range or empty. */
  unitsFor(offset: number, length: number): [number, number] | undefined;
}

/**
 * The units of a DFB blob as the cache and the P2P tier count them: blocks 0..n-1 at their blob offsets,
 * then the TOC unit n ([tocOffset, size): TOC + footer).
 */
export class UnitLayout implements Units {
  readonly units: number;

  constructor(
    readonly toc: Toc,
    readonly size: number,
  ) {
    this.units = toc.blockCount + 1;
  }

  offset(u: number): number {
    return u <= this.toc.blockCount ? this.toc.blockOffset(u) : this.size;
  }

  length(u: number): number {
    return this.offset(u + 1) - this.offset(u);
  }

  /** The unit holding blob byte `pos` (0 <= pos < size). */
  unitAt(pos: number): number {
    let lo = 0;
    let hi = this.units - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (this.offset(mid) <= pos) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** First and last unit overlapping [offset, offset+length); undefined when out of range or empty. */
  unitsFor(offset: number, length: number): [number, number] | undefined {
    if (!(offset >= 0) || !(length > 0) || offset + length > this.size) return undefined;
    return [this.unitAt(offset), this.unitAt(offset + length - 1)];
  }
}
