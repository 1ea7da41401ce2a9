import type { FillPlanner } from '../fetch/background-fill.js';
import { Priority, sourceUnavailable, type BlobRef, type BlockSource } from '../fetch/types.js';
import { sleep, realTimers, type Timers } from '../util/timers.js';
import type { HttpBlockClient } from './http-block-client.js';
import { HandBacks, InFlightBytes, type HandBackOptions } from './hand-back.js';
import type { TrackerState } from './tracker-state.js';
import type { LayerSwarm } from '../layer/swarm.js';
import { UnitLayout, type Units } from './unit-layout.js';

/**
 * How a seed's full copy takes the units it handed back to nodes (hand-back.ts) without a second registry
 * fetch: a source that asks a node the tracker names as holding the whole range, and a fill that leaves
 * the units still on their way to a node until that node announces them.
 */

export interface SeedHandBack {
  handBacks: HandBacks;
  /** For the seed's LayerStore: the swarm whose planner is seedFillPlanner. */
  layers: { swarm?: LayerSwarm };
  /** The seed's source chain around its registry source. */
  chain(registry: BlockSource): BlockSource[];
  /** Closes the client of the seed's copy. */
  close(): Promise<void>;
}

/**
 * A seed's hand-back (hand-back.ts) and its copy of the units handed back: the decisions, the seed's layers'
 * swarm (whose planner is the fill below) and their source chain (nodes first, then the registry source,
 * whose requests in flight tell whether the seed's registry link is full). Disabled: only the registry.
 */
export function seedHandBack(o: {
  enabled: boolean;
  tracker: TrackerState;
  layoutOf: LayoutOf;
  http: HttpBlockClient;
  timers: Timers;
  options?: Partial<Omit<HandBackOptions, 'now'>>;
}): SeedHandBack {
  const inFlight = new InFlightBytes();
  const handBacks = new HandBacks(o.tracker, inFlight, {
    now: () => o.timers.now(),
    ...(o.enabled ? o.options : { fullAtBytes: Infinity }),
  });
  const close = () => o.http.close();
  if (!o.enabled) return { handBacks, layers: {}, chain: (registry) => [registry], close };
  const source = new SeedPeerSource(o.tracker, o.layoutOf, o.http);
  const swarm: LayerSwarm = {
    join: ({ blob, toc }) => ({
      planner: seedFillPlanner(o.tracker, blob.digest, new UnitLayout(toc, blob.size), { timers: o.timers }),
      leave: () => Promise.resolve(),
    }),
  };
  return { handBacks, layers: { swarm }, chain: (registry) => [source, inFlight.wrap(registry)], close };
}

/** Looks up the blob's layout (the seed's open blobs). */
export type LayoutOf = (digest: string) => Units | undefined;

/**
 * Nodes as a source of a seed's own copy: the range from a live node that announced all of it, else
 * "unavailable" (the registry, next in the seed's chain). Every unit is verified by the fetcher; a node
 * that fails or serves a bad block sends the range on to the registry, and a bad block is reported against it.
 */
export class SeedPeerSource implements BlockSource {
  readonly kind = 'peer' as const;
  readonly name = 'nodes (seed copy)';
  /** Who served each buffer returned, so that a bad block is reported against that node. */
  private readonly servedBy = new WeakMap<Buffer, string>();

  constructor(
    private readonly tracker: TrackerState,
    private readonly layoutOf: LayoutOf,
    private readonly http: HttpBlockClient,
  ) {}

  async fetch(blob: BlobRef, offset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    const r = this.layoutOf(blob.digest)?.unitsFor(offset, length);
    const holder = r && this.tracker.holderOf(blob.digest, r[0], r[1]);
    if (!holder) throw sourceUnavailable(`no node holds ${blob.digest} ${offset}+${length}`);
    try {
      const data = await this.http.get(holder.address, blob.digest, offset, length, signal);
      this.servedBy.set(data, holder.id);
      return data;
    } catch (err) {
      if (signal.aborted) throw err;
      throw sourceUnavailable(`node ${holder.address}: ${(err as Error).message}`);
    }
  }

  /**
   * A block from a node failed verification: the seed's tracker counts it against that node, as a node's
   * report would, so that neither the seed's copy nor nodes' lookups put it first again for a while.
   */
  badBlock(_blob: BlobRef, data: Buffer): void {
    const id = this.servedBy.get(data);
    if (id) this.tracker.reportBadData(id);
  }
}

export interface SeedFillOptions {
  /** Runs in flight at once. Default 3. */
  concurrency?: number;
  /**
   * Runs taken from nodes at once (each uses an upload slot of a node while the swarm still trades). Default 1.
   */
  nodeRuns?: number;
  /** Pause while only units on their way to nodes are missing (ms). Default 200. */
  waitMs?: number;
  timers?: Timers;
}

/**
 * A seed's fill, in blob order like the plain fill, except that units on their way to a node (handed back,
 * or sent by the seed and not announced yet) wait until that node announces them or the claim lapses,
 * and a run that a node holds comes from it (SeedPeerSource, first in the seed's chain). Returns when
 * nothing is left but units in flight; the plain in-order pass then takes anything left, from the registry.
 */
export function seedFillPlanner(
  tracker: TrackerState,
  digest: string,
  layout: Units,
  opts: SeedFillOptions = {},
): FillPlanner {
  const timers = opts.timers ?? realTimers;
  return async (fetcher, signal) => {
    const cache = fetcher.cache;
    const claimed = new Set<number>();
    // units whose run failed here: left to the in-order pass (retries with a back-off), not tried again
    const failed = new Set<number>();
    const open = (u: number) => !claimed.has(u) && !failed.has(u) && !fetcher.inFlight(u);
    let nodeRuns = 0;
    const maxNodeRuns = opts.nodeRuns ?? 1;
    const pending = (u: number) => tracker.pendingAnywhere(digest, u);
    /** The next run: adjacent missing units of one kind (held by one node, or by none); 'wait'; undefined. */
    const next = (limit: number): (number[] & { atNode?: boolean }) | 'wait' | undefined => {
      let waiting = false;
      for (let u = cache.nextMissing(0); u >= 0; u = cache.nextMissing(u + 1)) {
        if (!open(u)) continue;
        const atNode = tracker.holderOf(digest, u, u) !== undefined;
        if (atNode && nodeRuns >= maxNodeRuns) {
          waiting = true;
          continue;
        }
        if (!atNode && pending(u)) {
          waiting = true;
          continue;
        }
        const run = [u];
        let bytes = layout.length(u);
        for (let v = u + 1; v < layout.units && !cache.has(v) && open(v); v++) {
          bytes += layout.length(v);
          if (bytes > limit) break;
          if (atNode ? !tracker.holderOf(digest, u, v) : tracker.holderOf(digest, v, v) || pending(v)) break;
          run.push(v);
        }
        return Object.assign(run, { atNode });
      }
      return waiting ? 'wait' : undefined;
    };
    const worker = async () => {
      for (;;) {
        signal.throwIfAborted();
        if (cache.isComplete) return;
        const limit = await fetcher.fillTurn(fetcher.maxRunBytes, signal);
        const run = next(limit);
        if (run === undefined) return;
        if (run === 'wait') {
          await sleep(timers, opts.waitMs ?? 200, signal);
          continue;
        }
        for (const u of run) claimed.add(u);
        if (run.atNode) nodeRuns++;
        try {
          // a failed run is left to the in-order pass after this planner (with retries)
          await Promise.allSettled(fetcher.ensure(run, Priority.Fill));
          for (const u of run) if (!cache.has(u)) failed.add(u);
        } finally {
          for (const u of run) claimed.delete(u);
          if (run.atNode) nodeRuns--;
        }
      }
    };
    await Promise.all(Array.from({ length: opts.concurrency ?? 3 }, worker));
  };
}
