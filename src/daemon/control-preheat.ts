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

/**
 * Preheats `ref` into `store` (this process's layers), then gives the layers to `holds`, which keeps them
 * open (served to peers) for a while; without holds they are released at once.
 */
export async function preheatHere(
  store: LayerStore,
  client: RegistryClient,
  ref: ImageReference,
  signal: AbortSignal,
  logger?: Logger,
  holds?: PreheatHolds,
): Promise<PreheatSummary> {
  const r = await preheat(store, client, ref, { signal, logger });
  if (holds) holds.hold(r.release);
  else await r.release();
  const { release: _release, ...summary } = r;
  return summary;
}

/**
 * Layers of images preheated through the daemon, kept open for `ms` after their preheat (p2p.preheatServeMs):
 * an open layer stays in its swarm, so peers warming the same image at the same time keep taking its blocks
 * from this host. Each preheat holds its own reference; close() gives every one back (the daemon stopping).
 */
export class PreheatHolds {
  private readonly held = new Set<{ timer?: NodeJS.Timeout; release: () => Promise<void> }>();
  private closed = false;

  constructor(
    readonly ms: number,
    private readonly logger?: Logger,
  ) {}

  /** Calls `release` after ms (at once when ms is 0 or after close). */
  hold(release: () => Promise<void>): void {
    if (this.ms <= 0 || this.closed) return void this.give(release);
    const h: { timer?: NodeJS.Timeout; release: () => Promise<void> } = { release };
    h.timer = setTimeout(() => {
      this.held.delete(h);
      void this.give(release);
    }, this.ms);
    h.timer.unref();
    this.held.add(h);
  }

  /** How many preheats' layers are held. */
  get size(): number {
    return this.held.size;
  }

  /**
   * Gives back the oldest preheat's layers now (the cache is full of blobs in use: they may be evicted
   * then); false when none is held.
   */
  async releaseOldest(): Promise<boolean> {
    const h = this.held.values().next();
    if (h.done) return false;
    this.held.delete(h.value);
    clearTimeout(h.value.timer);
    this.logger?.info(
      { left: this.held.size },
      'preheated layers released early: the cache is above its high watermark',
    );
    await this.give(h.value.release);
    return true;
  }

  /** Gives every held layer back now; later holds release at once. */
  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.held];
    this.held.clear();
    for (const h of all) {
      clearTimeout(h.timer);
      await this.give(h.release);
    }
  }

  private async give(release: () => Promise<void>): Promise<void> {
    await release().catch((err: unknown) => this.logger?.warn({ err }, 'preheated layers: release failed'));
  }
}
