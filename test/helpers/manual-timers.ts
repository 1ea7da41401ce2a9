import type { Timers } from '../../src/util/timers.js';

/**
 * Timers whose clock moves only when the test says so: `advance(ms)` moves it and runs the timers then due
 * (those set by their callbacks wait for the next advance); `pending()` counts the timers not run yet.
 */
export function manualTimers(start = 0) {
  let now = start;
  let pending: Array<{ fn: () => void; at: number }> = [];
  const timers: Timers = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const t = { fn, at: now + ms };
      pending.push(t);
      return t;
    },
    clearTimeout: (h) => {
      pending = pending.filter((t) => t !== h);
    },
  };
  const advance = (ms: number) => {
    now += ms;
    const due = pending.filter((t) => t.at <= now);
    pending = pending.filter((t) => t.at > now);
    for (const t of due) t.fn();
  };
  return { timers, advance, pending: () => pending.length };
}
