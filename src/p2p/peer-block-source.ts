import { countUp } from '../util/count-up.js';
import { stallSignal } from '../util/stall-signal.js';
import { SLOW_FILL_FACTOR, transferTimeoutMs } from '../util/transfer-timeout.js';
import { realTimers, type Timers } from '../util/timers.js';
import {
  isBusy,
  Priority,
  sourceUnavailable,
  type BlobRef,
  type BlockSource,
  type FetchContext,
} from '../fetch/types.js';
import { DfError } from '../errors.js';
import { bodyHold } from '../fetch/body-hold.js';
import type { HttpBlockClient } from './http-block-client.js';
import type { Isolation } from './isolation.js';
import type { Holder, PeerView } from './peer-view.js';
import type { RegistryFallback } from './registry-fallback.js';

export interface PeerSourceDeps {
  view(digest: string): PeerView | undefined;
  /** Asks the tracker again (rate-limited) when no known holder has a range. */
  refresh(view: PeerView): void;
  http: HttpBlockClient;
  isolation: Isolation;
  /** A peer failed: the tracker hears of it with the next announce. */
  reportFailure(peerId: string): void;
  /** A fill run timed out while the peer's bytes kept coming: sent elsewhere, the peer not isolated. */
  onSlow?(peerId: string): void;
  zone: string;
  timeoutMs: number;
  timers?: Timers;
  /** Told of ranges whose blocks failed verification (why a retry may go to the registry; metrics). */
  fallback?: RegistryFallback;
}

/** A holder that answered "busy" (all upload slots taken) is not asked for fill runs for this long (ms). */
export const BUSY_BACKOFF_MS = 500;

/**
 * A holder whose fill runs time out while its bytes keep coming (slow, not hung) is isolated only after this
 * many such timeouts in a row without a request it completed: a peer that trickles cannot hold requests
 * forever, and one whose uplink is merely shared by many is not shut out.
 */
export const SLOW_TIMEOUTS_UNTIL_ISOLATED = 3;
/** Holders whose slow timeouts in a row are counted (the least recently counted go first). */
const SLOW_TABLE = 256;

/**
 * Other nodes as a BlockSource: the range goes to the best holder the tracker named (fastest so far,
 * then same zone, least loaded), with a per-request time limit that grows with the request's size. When no
 * usable holder has the range, or the holder fails, it throws "unavailable" so that the fetcher moves on to
 * the seed at once; a holder that fails or serves a bad block is isolated. Slow is not down for background
 * fill: a fill run that keeps receiving bytes runs past its limit until it stalls (timeoutMs without a byte;
 * SLOW_FILL_FACTOR times the limit at most), and one that reaches that limit while bytes are still arriving
 * sends the range elsewhere without isolating the holder (it is planned around for a moment), up to
 * SLOW_TIMEOUTS_UNTIL_ISOLATED in a row. A read a container waits on keeps the fixed limit and isolates a
 * holder that misses it: the next reads go elsewhere at once.
 */
export class PeerBlockSource implements BlockSource {
  readonly kind = 'peer' as const;
  readonly name = 'peers';
  /** Bytes per ms, moving average per peer. */
  private readonly speed = new Map<string, number>();
  /** This node's requests in flight per peer. */
  private readonly inFlight = new Map<string, number>();
  /** Holders that refused a fill run with all upload slots taken → until when (ms) they are not asked. */
  private readonly full = new Map<string, number>();
  private readonly servedBy = new WeakMap<Buffer, { id: string; offset: number }>();
  /** Holders whose fill runs timed out while their bytes were still arriving → how many in a row. */
  private readonly slow = new Map<string, number>();
  private readonly timers: Timers;

  constructor(private readonly deps: PeerSourceDeps) {
    this.timers = deps.timers ?? realTimers;
  }

  async fetch(
    blob: BlobRef,
    offset: number,
    length: number,
    signal: AbortSignal,
    ctx?: FetchContext,
  ): Promise<Buffer> {
    const view = this.deps.view(blob.digest);
    const r = view?.layout.unitsFor(offset, length);
    if (!view || !r) throw sourceUnavailable(`no peer view of ${blob.digest}`);
    const fill = ctx?.planned === true && ctx.priority === Priority.Fill;
    const holders = view
      .holdersOf(r[0], r[1])
      .filter((h) => !this.deps.isolation.isolated(h.id) && !(fill && this.isFull(h.id)));
    if (!holders.length) {
      this.deps.refresh(view);
      throw sourceUnavailable(`no peer holds ${blob.digest} ${offset}+${length}`);
    }
    const h = this.pick(holders);
    const what = `peer ${h.address}`;
    const limit = transferTimeoutMs(this.deps.timeoutMs, length);
    const rq = stallSignal(signal, {
      firstMs: limit,
      idleMs: this.deps.timeoutMs,
      // a read a container waits on keeps its fixed limit
      maxMs: fill ? limit * SLOW_FILL_FACTOR : limit,
      timers: this.timers,
      what,
    });
    // when body bytes last arrived (an answer's head alone does not make a hung holder slow)
    let lastByte = -Infinity;
    const progress = (data: Buffer, filled: number) => {
      lastByte = this.timers.now();
      ctx?.progress?.(data, filled);
    };
    const t0 = this.timers.now();
    this.inFlight.set(h.id, (this.inFlight.get(h.id) ?? 0) + 1);
    try {
      const data = await this.deps.http.get(
        h.address,
        blob.digest,
        offset,
        length,
        rq.signal,
        fill ? { fill: '1' } : {},
        {
          progress,
          alive: rq.alive,
          ...bodyHold(ctx, this.deps.timeoutMs),
        },
      );
      const ms = Math.max(1, this.timers.now() - t0);
      const prev = this.speed.get(h.id);
      const s = length / ms;
      this.speed.set(h.id, prev === undefined ? s : prev * 0.7 + s * 0.3);
      this.deps.isolation.ok(h.id);
      this.slow.delete(h.id);
      this.servedBy.set(data, { id: h.id, offset });
      return data;
    } catch (err) {
      if (signal.aborted) throw err;
      const e = DfError.from(err);
      if (isBusy(e)) {
        // its upload slots are taken: not a failure; other holders (or later) for a moment
        this.planAround(h.id);
        throw e;
      }
      // a fill run that timed out while its bytes were still coming: slow (an uplink shared by many), not
      // hung (that stalls: nothing for timeoutMs). The range goes elsewhere, the holder is planned around
      // for a moment and ranks as slow, and stays in the view
      const now = this.timers.now();
      if (fill && e.code === 'TIMEOUT' && now - lastByte < this.deps.timeoutMs) {
        if (countUp(this.slow, h.id, SLOW_TABLE) < SLOW_TIMEOUTS_UNTIL_ISOLATED) {
          this.planAround(h.id);
          this.deps.onSlow?.(h.id);
          const s = length / Math.max(1, now - t0);
          this.speed.set(h.id, Math.min(this.speed.get(h.id) ?? s, s));
          throw sourceUnavailable(`${what}: ${e.message} (slow, not down)`);
        }
        this.slow.delete(h.id);
      }
      // a holder that lost the range (evicted) is not at fault; anything else is
      if (e.details.sourceUnavailable !== true) {
        this.deps.isolation.fail(h.id, e.code);
        this.deps.reportFailure(h.id);
      }
      view.holders = view.holders.filter((x) => x.id !== h.id);
      throw sourceUnavailable(`${what}: ${e.message}`);
    } finally {
      rq.dispose();
      const b = (this.inFlight.get(h.id) ?? 1) - 1;
      if (b > 0) this.inFlight.set(h.id, b);
      else this.inFlight.delete(h.id);
    }
  }

  /** Fill runs go to other holders than `peer` for BUSY_BACKOFF_MS. */
  private planAround(peer: string): void {
    const now = this.timers.now();
    // holders come and go (a restarted node has a new id): the expired entries go before a new one
    if (this.full.size >= 256) for (const [id, until] of this.full) if (until <= now) this.full.delete(id);
    this.full.set(peer, now + BUSY_BACKOFF_MS);
  }

  /** Whether `peer` refused a fill run as busy (all upload slots taken) moments ago: plan around it. */
  isFull(peer: string): boolean {
    const until = this.full.get(peer);
    if (until === undefined) return false;
    if (until > this.timers.now()) return true;
    this.full.delete(peer);
    return false;
  }

  badBlock(blob: BlobRef, data: Buffer, offset: number, length: number): void {
    const by = this.servedBy.get(data);
    if (!by) return;
    this.deps.fallback?.note(blob.digest, by.offset + offset, length, 'verification');
    this.deps.isolation.fail(by.id, 'bad block');
    this.deps.reportFailure(by.id);
  }

  /**
   * The holder to ask: same zone first, then the fewest of this node's requests in flight (spreads the
   * load over the holders' uploads instead of herding onto one), then fewest reported failures, then a
   * draw weighted by measured speed (unknown holders count as fast: they may be) and lightly by load.
   */
  private pick(hs: Holder[]): Holder {
    let best = hs[0]!;
    let bestKey: number[] = [];
    let fastest = 0;
    for (const sp of this.speed.values()) fastest = Math.max(fastest, sp);
    for (const h of hs) {
      const sp = this.speed.get(h.id) ?? Math.max(fastest, 1);
      const key = [
        this.deps.zone && h.zone === this.deps.zone ? 1 : 0,
        -(this.inFlight.get(h.id) ?? 0),
        -h.failures,
        (sp * (0.5 + Math.random())) / (1 + h.load),
      ];
      if (!bestKey.length || greater(key, bestKey)) {
        best = h;
        bestKey = key;
      }
    }
    return best;
  }
}

function greater(a: number[], b: number[]): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i]! > b[i]!;
  return false;
}
