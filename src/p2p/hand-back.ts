import type { BlobRef, BlockSource } from '../fetch/types.js';
import type { TrackerState } from './tracker-state.js';

/**
 * A seed hands a node's planned run back when its own registry link is full: the node fetches the run from
 * the registry itself. A seed's link is often as thin as a node's, and the registry's is not: fed through
 * the seed alone, a swarm gets new blocks only as fast as the seed's link (bench/p2p: 20 Mbit/s seeds under
 * a 40 Mbit/s registry took 25 s to get a 58 MiB blob into a swarm of 16). The tracker holds the units for
 * that node (pending, as if the seed had sent them), so that other nodes wait for it and the registry still
 * sends each unit to the cluster once; the seed's own copy takes them from the node later (SeedPeerSource).
 */
export interface HandBackOptions {
  /**
   * Registry bytes in flight at the seed from which its link counts as full. Default 1 MiB (bench/p2p: 2 MiB
   * left the registry's link half used at N = 4).
   */
  fullAtBytes?: number;
  /** Runs handed back per blob and not announced yet, at most. Default 4. */
  maxOutstanding?: number;
  /** A run handed back and not announced counts as outstanding this long at most (ms). Default 15 s. */
  ttlMs?: number;
  now: () => number;
}

interface Outstanding {
  peer: string;
  first: number;
  last: number;
  at: number;
}

/** Registry bytes a seed has in flight (its fill and nodes' runs): how full its registry link is. */
export class InFlightBytes {
  bytes = 0;

  /** `inner` with its requests counted here. */
  wrap(inner: BlockSource): BlockSource {
    const count = async (...args: Parameters<BlockSource['fetch']>): Promise<Buffer> => {
      const length = args[2];
      this.bytes += length;
      try {
        return await inner.fetch(...args);
      } finally {
        this.bytes -= length;
      }
    };
    return {
      kind: inner.kind,
      name: inner.name,
      fetch: count,
      badBlock: (blob: BlobRef, data: Buffer, offset: number, length: number) =>
        inner.badBlock?.(blob, data, offset, length),
    };
  }
}

export class HandBacks {
  private readonly blobs = new Map<string, Outstanding[]>();
  private readonly fullAt: number;
  private readonly max: number;
  private readonly ttl: number;
  /** Runs handed back (metrics, tests). */
  handedBack = 0;

  constructor(
    private readonly tracker: TrackerState,
    private readonly inFlight: InFlightBytes,
    private readonly opts: HandBackOptions,
  ) {
    this.fullAt = opts.fullAtBytes ?? 1024 * 1024;
    this.max = opts.maxOutstanding ?? 4;
    this.ttl = opts.ttlMs ?? 15_000;
  }

  /**
   * Whether to hand `units` (adjacent, none held or in flight at the seed: `atSeed`) back to `peer`: the
   * seed's registry link is full, fewer than maxOutstanding runs of the blob are handed back and not yet
   * announced, and the tracker knows the peer. If so, the units are claimed for it at the tracker.
   */
  take(digest: string, peer: string, units: readonly number[], atSeed: (u: number) => boolean): boolean {
    if (this.inFlight.bytes < this.fullAt || !units.length || units.some(atSeed)) return false;
    const list = this.outstanding(digest);
    if (list.length >= this.max) return false;
    if (!this.tracker.handBack(digest, peer, units)) return false;
    list.push({ peer, first: units[0]!, last: units[units.length - 1]!, at: this.opts.now() });
    this.blobs.set(digest, list);
    this.handedBack++;
    return true;
  }

  /** The blob's runs handed back and neither announced nor expired (pruned now; none: the blob is dropped). */
  private outstanding(digest: string): Outstanding[] {
    const now = this.opts.now();
    const list = (this.blobs.get(digest) ?? []).filter(
      (o) => now - o.at < this.ttl && !this.tracker.holds(digest, o.peer, o.last),
    );
    if (list.length) this.blobs.set(digest, list);
    else this.blobs.delete(digest);
    return list;
  }
}

/** How long a node asks seeds not to hand runs back after its own registry fetch of one failed (ms). */
export const ORIGIN_OFF_MS = 5 * 60_000;

/**
 * A node's side: whether its planned seed requests say it can take a run back (`origin=1`). Off for a while
 * after a handed-back run failed at the registry (no route or no credentials there from this node: a
 * cluster where only seeds reach the registry); the run is then asked of the seed again, without it.
 */
export class OriginSwitch {
  private offUntil = -Infinity;

  constructor(
    private readonly now: () => number,
    private readonly onOff?: (err: unknown) => void,
  ) {}

  get on(): boolean {
    return this.now() >= this.offUntil;
  }

  failed(err: unknown): void {
    if (this.on) this.onOff?.(err);
    this.offUntil = this.now() + ORIGIN_OFF_MS;
  }
}
