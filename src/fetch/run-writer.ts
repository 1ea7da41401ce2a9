import { adjacentGroups } from '../util/adjacent-groups.js';
import type { Timers } from '../util/timers.js';

/** Mid-run, verified units are written once this many bytes are pending... */
export const MID_RUN_WRITE_BYTES = 256 * 1024;
/** ...or once the oldest of them has waited this long (ms). */
export const MID_RUN_WRITE_MS = 500;

/** A unit of a run, verified, with its stored bytes and their offset in the blob. */
export interface VerifiedUnit<W extends { unit: number }> {
  waiter: W;
  unitOff: number;
  stored: Buffer;
}

/**
 * Stores the verified units of one run while the rest of the run is still arriving: one write in flight at a
 * time, and the units verified meanwhile go together in the next one (each group of adjacent units in one
 * write), once enough is pending or it has waited long enough (below). A unit is in the cache, and so
 * announced to peers and served from the cache file, when its write is done rather than when the whole run
 * has arrived: on a 20 Mbit/s link shared by a swarm a seed run of 1 MiB takes seconds, and no peer could
 * take any of its blocks from this node before its last byte.
 */
export class RunWriter<W extends { unit: number }> {
  private readonly units: VerifiedUnit<W>[] = [];
  private written = 0;
  private writing = 0;
  private chain: Promise<void> = Promise.resolve();
  /** Bytes added and not written yet, and when the oldest of them was added. */
  private pendingBytes = 0;
  private pendingSince = 0;
  private timer: unknown;
  private readonly minBytes: number;
  private readonly maxAgeMs: number;

  /**
   * `store` writes one group of adjacent units and settles their waiters; it must not reject. Mid-run, what
   * is pending is written once it reaches `minBytes` or has waited `maxAgeMs`: a run that arrives quickly is
   * written whole at its end, as before (peers then plan whole runs from it, not many small ones: each
   * request costs CPU at both ends), while a slow one is announced piece by piece.
   */
  constructor(
    private readonly store: (group: VerifiedUnit<W>[]) => Promise<void>,
    private readonly timers: Timers,
    opts: { minBytes?: number; maxAgeMs?: number } = {},
  ) {
    this.minBytes = opts.minBytes ?? MID_RUN_WRITE_BYTES;
    this.maxAgeMs = opts.maxAgeMs ?? MID_RUN_WRITE_MS;
  }

  /** A unit verified (in unit order). */
  add(u: VerifiedUnit<W>): void {
    if (this.pendingBytes === 0) this.pendingSince = this.timers.now();
    this.pendingBytes += u.stored.length;
    this.units.push(u);
  }

  /**
   * Mid-run: writes what is pending if it is large or old enough and no write is in flight; else looks
   * again when it will be old enough (the rest of the run may be slow to come, or stalled).
   */
  nudge(): void {
    if (this.writing > 0 || this.pendingBytes === 0) return;
    const age = this.timers.now() - this.pendingSince;
    if (this.pendingBytes >= this.minBytes || age >= this.maxAgeMs) {
      void this.flush();
      return;
    }
    this.timer ??= this.timers.setTimeout(() => {
      this.timer = undefined;
      this.nudge();
    }, this.maxAgeMs - age);
  }

  /** Writes everything added so far, after the writes in flight; resolves when all are done. */
  flush(): Promise<void> {
    if (this.timer !== undefined) {
      this.timers.clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.written < this.units.length) {
      const batch = this.units.slice(this.written);
      this.written = this.units.length;
      this.pendingBytes = 0;
      this.writing++;
      this.chain = this.chain
        .then(async () => {
          for (const group of adjacentGroups(batch, (g) => g.waiter.unit)) await this.store(group);
        })
        .finally(() => {
          this.writing--;
          // what arrived during the write
          this.nudge();
        });
    }
    return this.chain;
  }
}

/** The stored bytes of adjacent units, as one buffer: a view of the run's buffer where they lie in it (nearly always). */
export function groupSpan<W extends { unit: number }>(group: readonly VerifiedUnit<W>[]): Buffer {
  const first = group[0]!;
  const last = group[group.length - 1]!;
  const length = last.unitOff - first.unitOff + last.stored.length;
  const oneView = group.every(
    (g) =>
      g.stored.buffer === first.stored.buffer &&
      g.stored.byteOffset - first.stored.byteOffset === g.unitOff - first.unitOff,
  );
  if (oneView) return Buffer.from(first.stored.buffer, first.stored.byteOffset, length);
  return Buffer.concat(
    group.map((g) => g.stored),
    length,
  );
}
