import { DfError } from '../errors.js';
import type { Timers } from './timers.js';

export interface StallSignalOptions {
  /** The request's first limit (ms): it times out then unless it made progress within the last `idleMs`. */
  firstMs: number;
  /** After the first limit, a request that receives nothing for this long times out (ms). */
  idleMs: number;
  /** Never longer than this in all (ms), progress or not: a peer trickling bytes cannot hold it forever. */
  maxMs: number;
  timers: Timers;
  /** For the message. */
  what: string;
}

/**
 * A child AbortController for a transfer that may be slow but must not stall: it aborts with TIMEOUT at
 * `firstMs` unless `alive()` was called within the last `idleMs`, in which case it waits on until the
 * transfer goes `idleMs` without progress (or `maxMs` in all); and with the parent's reason when the
 * parent aborts. A transfer that shares a saturated link with many others is slow, not dead.
 * `alive()` is cheap (a clock read): call it on every chunk. Call dispose() when done.
 */
export function stallSignal(
  parent: AbortSignal,
  o: StallSignalOptions,
): { signal: AbortSignal; alive: () => void; dispose: () => void } {
  const ac = new AbortController();
  const { timers } = o;
  const start = timers.now();
  let last = -Infinity;
  let h: unknown;
  const onAbort = () => ac.abort(parent.reason);
  const check = () => {
    const now = timers.now();
    const until = Math.min(start + o.maxMs, Math.max(start + o.firstMs, last + o.idleMs));
    if (now < until) {
      h = timers.setTimeout(check, until - now);
      return;
    }
    h = undefined;
    const why =
      now - start >= o.maxMs
        ? `not done within ${o.maxMs} ms`
        : last < 0
          ? `no answer within ${now - start} ms`
          : `nothing received for ${now - last} ms`;
    ac.abort(DfError.timeout(`${o.what}: ${why}`));
  };
  if (parent.aborted) ac.abort(parent.reason);
  else {
    parent.addEventListener('abort', onAbort, { once: true });
    h = timers.setTimeout(check, o.firstMs);
  }
  return {
    signal: ac.signal,
    alive: () => {
      last = timers.now();
    },
    dispose: () => {
      if (h !== undefined) timers.clearTimeout(h);
      h = undefined;
      parent.removeEventListener('abort', onAbort);
    },
  };
}
