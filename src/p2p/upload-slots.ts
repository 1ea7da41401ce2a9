/**
 * A node's upload slots for background-fill runs (p2p.uploadSlots; src/p2p/block-server.ts). A run that
 * finds every slot taken waits a moment for one, in arrival order, before it is refused as busy (429): in a
 * swarm every uplink is full, a slot frees every ~0.1 s (a 4-slot node at 20 Mbit/s sends a 220 KiB run in
 * ~0.35 s), and an asker refused at once plans again, asks another holder that is as full, and is refused
 * again: more refusals than runs served (bench/p2p at N = 16), a request and an answer each.
 *
 * Few may wait (SLOT_WAITERS), so that a waiting asker is served soon or refused soon; the others are
 * refused at once, as before, and take other holders.
 */
import type { Timers } from '../util/timers.js';
import { realTimers } from '../util/timers.js';

/** How long a fill run waits for a slot before it is refused as busy (ms). */
export const SLOT_WAIT_MS = 150;
/**
 * Fill runs that may wait for a slot at once; others are refused at once. In the simulation (bench/p2p-sim)
 * one waiter cut refusals by a third at the same fill times (in bench/p2p by 14 % at N = 16); as many as
 * there are slots (4) halved them but made fills 5–7 % slower (bench/p2p: 2–3 %): the last in line waits
 * out its 150 ms with its own download link idle.
 */
export const SLOT_WAITERS = 1;

interface Waiter {
  grant: (ok: boolean) => void;
}

export class UploadSlots {
  private active = 0;
  private readonly waiters: Waiter[] = [];

  constructor(
    /** Slots (0: no limit). */
    readonly slots: number,
    private readonly o: { waitMs?: number; maxWaiters?: number; timers?: Timers } = {},
  ) {}

  /** Runs being served. */
  get taken(): number {
    return this.active;
  }

  /** Runs waiting for a slot. */
  get waiting(): number {
    return this.waiters.length;
  }

  /**
   * A slot: at once when one is free, else once one frees within the wait (true); false when none frees in
   * time, too many wait already, or `signal` aborts (the asker went away). A true answer must be released.
   */
  acquire(signal?: AbortSignal): Promise<boolean> | boolean {
    let answer: boolean | undefined;
    let settle: ((ok: boolean) => void) | undefined;
    this.take((ok) => (settle ? settle(ok) : (answer = ok)), signal);
    return answer ?? new Promise<boolean>((resolve) => (settle = resolve));
  }

  /**
   * acquire() with a callback, called once: at once when the answer is known now, else when a slot is
   * handed over (from release()) or the wait ends. For callers without promises (bench/lib/p2p-sim.ts runs
   * on a virtual clock, whose clearTimeout may do nothing: a late timer finds the waiter answered).
   */
  take(then: (ok: boolean) => void, signal?: AbortSignal): void {
    if (this.slots <= 0) return then(true);
    if (this.active < this.slots) {
      this.active++;
      return then(true);
    }
    const waitMs = this.o.waitMs ?? SLOT_WAIT_MS;
    if (waitMs <= 0 || this.waiters.length >= (this.o.maxWaiters ?? SLOT_WAITERS) || signal?.aborted)
      return then(false);
    const timers = this.o.timers ?? realTimers;
    let answered = false;
    const w: Waiter = {
      grant: (ok) => {
        if (answered) return;
        answered = true;
        timers.clearTimeout(timer);
        signal?.removeEventListener('abort', gone);
        then(ok);
      },
    };
    const gone = () => {
      const i = this.waiters.indexOf(w);
      if (i >= 0) this.waiters.splice(i, 1);
      w.grant(false);
    };
    const timer = timers.setTimeout(gone, waitMs);
    signal?.addEventListener('abort', gone, { once: true });
    this.waiters.push(w);
  }

  /** A slot is free again: handed to the first waiter, if any. */
  release(): void {
    if (this.slots <= 0) return;
    const w = this.waiters.shift();
    if (w) w.grant(true);
    else this.active = Math.max(0, this.active - 1);
  }
}
