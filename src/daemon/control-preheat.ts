import { z } from 'zod';
import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { preheat, type PreheatResult } from '../layer/preheat.js';
import type { LayerStore } from '../layer/layer-store.js';
import type { RegistryClient } from '../registry/client.js';
import { parseReference, type ImageReference } from '../registry/reference.js';
import type { ControlCommand } from './control-server.js';

/** Arguments of the control socket's `preheat` (what `dfnode preheat` sends). */
export const preheatArgs = z.strictObject({ ref: z.string().min(1).max(1024) });

/** A preheat's result once its layers are released (they stay in the cache). */
export type PreheatSummary = Omit<PreheatResult, 'release'>;

/** Preheats an image into the cache of whichever process holds it (dfnode run, or its fuse manager). */
export type Preheater = (ref: ImageReference, signal: AbortSignal) => Promise<PreheatSummary>;

/**
 * `preheat` over the control socket: every block of an image into the running daemon's cache, the cache its
 * containers read from (a separate `dfnode preheat` process cannot take that cache while the daemon holds it).
 */
export function preheatControlCommand(hooks: { preheat?: Preheater }): ControlCommand<typeof preheatArgs> {
  return {
    args: preheatArgs,
    run(args, ctx): Promise<PreheatSummary> {
      if (!hooks.preheat)
        throw new DfError(
          'FAILED_PRECONDITION',
          'this dfnode run serves no layers yet: retry once it has started',
        );
      return hooks.preheat(parseReference(args.ref), ctx.signal);
    },
  };
}

/** Preheats `ref` into `store` (this process's layers) and releases the layers again. */
export async function preheatHere(
  store: LayerStore,
  client: RegistryClient,
  ref: ImageReference,
  signal: AbortSignal,
  logger?: Logger,
): Promise<PreheatSummary> {
  const r = await preheat(store, client, ref, { signal, logger });
  await r.release();
  const { release: _release, ...summary } = r;
  return summary;
}
