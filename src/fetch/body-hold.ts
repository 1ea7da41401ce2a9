import { FALLBACK_MS, fillHoldMs, type BodyHoldHooks } from '../util/rcv-lowat.js';
import { Priority, type FetchContext } from './types.js';

/**
 * The hold of a range's body: fillHoldMs of the transfer's stall limit while its run is fill (fewer wake-ups
 * on a slow link, and a higher mark: rcv-lowat.ts), FALLBACK_MS once a reader waits on it (a fill run promoted
 * in flight: the bytes held back are handed over at once); none for a run something waited on from the start.
 */
export function bodyHold(ctx: FetchContext | undefined, stallMs: number): BodyHoldHooks {
  if (ctx?.priority !== Priority.Fill) return {};
  const fill = fillHoldMs(stallMs);
  return { holdMs: () => (ctx.waitedOn?.() ? FALLBACK_MS : fill), onHurry: ctx.onHurry };
}
