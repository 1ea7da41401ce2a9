import { DfError } from '../errors.js';

/** Clock and timers, injectable so that tests control time where it matters. */
export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => {
    const t = setTimeout(fn, ms);
    t.unref?.();
    return t;
  },
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Like realTimers, but a pending timer keeps the process alive (a CLI waiting before a retry). */
export const keepAliveTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

/** Resolves after ms, or rejects with ABORTED when the signal fires first. */
export function sleep(timers: Timers, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortReason(signal));
    const onAbort = () => {
      timers.clearTimeout(h);
      reject(abortReason(signal!));
    };
    const h = timers.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The signal's reason as a DfError (ABORTED unless the reason already is a DfError). */
export function abortReason(signal: AbortSignal): DfError {
  const r: unknown = signal.reason;
  return r instanceof DfError ? r : DfError.aborted(undefined, { cause: r });
}

/**
 * Settles with `p`, or rejects as soon as `signal` aborts, or with TIMEOUT after `ms` (0 = no timer).
 * The operation behind `p` is not stopped by this (pass the same signal to it for that); the caller
 * just stops waiting, so a source that ignores its signal still cannot hang a reader.
 */
export function bound<T>(
  p: Promise<T>,
  opts: { signal?: AbortSignal; ms?: number; timers?: Timers; what: string },
): Promise<T> {
  const { signal, ms = 0, timers = realTimers, what } = opts;
  if (!signal && ms <= 0) return p;
  // the caller may stop waiting first: a later rejection of p is expected, not unhandled
  p.catch(() => {});
  return new Promise<T>((resolve, reject) => {
    let h: unknown;
    const done = () => {
      if (h !== undefined) timers.clearTimeout(h);
      signal?.removeEventListener('abort', onAbort);
    };
    const onAbort = () => {
      done();
      reject(abortReason(signal!));
    };
    if (signal?.aborted) return reject(abortReason(signal));
    signal?.addEventListener('abort', onAbort, { once: true });
    if (ms > 0)
      h = timers.setTimeout(() => {
        done();
        reject(DfError.timeout(`${what}: no answer within ${ms} ms`));
      }, ms);
    p.then(
      (v) => {
        done();
        resolve(v);
      },
      (e) => {
        done();
        reject(e);
      },
    );
  });
}

/**
 * A child AbortController that aborts when the parent aborts, or with TIMEOUT after ms (0 = never).
 * Call dispose() when done so that the timer and listener go away.
 */
export function childSignal(
  parent: AbortSignal | undefined,
  ms: number,
  timers: Timers,
  what: string,
): { signal: AbortSignal; dispose: () => void } {
  const ac = new AbortController();
  const onAbort = () => ac.abort(parent!.reason);
  if (parent?.aborted) ac.abort(parent.reason);
  else parent?.addEventListener('abort', onAbort, { once: true });
  const h =
    ms > 0
      ? timers.setTimeout(() => ac.abort(DfError.timeout(`${what}: no answer within ${ms} ms`)), ms)
      : undefined;
  return {
    signal: ac.signal,
    dispose: () => {
      if (h !== undefined) timers.clearTimeout(h);
      parent?.removeEventListener('abort', onAbort);
    },
  };
}
