import { sleep, realTimers, type Timers } from '../util/timers.js';
import {
  isBusy,
  awayUnits,
  isDeferred,
  isHandedBack,
  isSourceUnavailable,
  Priority,
  type SourceKind,
} from '../fetch/types.js';
import type { OriginSwitch } from './hand-back.js';
import type { Holder, PeerView } from './peer-view.js';

/** A run chosen by the planner and the tier it comes from. */
export interface PlannedRun {
  units: number[];
  from: 'peer' | 'seed';
}

/** Pieces the seed does not hold yet are picked among the first this many (where its in-order fill is). */
const SEED_WINDOW = 4;

export interface PlanOptions {
  /** Units this node's own workers are fetching. */
  claimed: ReadonlySet<number>;
  /** Largest peer run (stored bytes). */
  maxRunBytes: number;
  /** Largest seed run (stored bytes). */
  seedRunBytes: number;
  /** A seed slot is free: a run of units no peer holds may be planned. */
  seed: boolean;
  /** Holders that may be asked now (not isolated, not busy). Default: all. */
  usable?: (h: Holder) => boolean;
  /**
   * Holders that will be asked soon (busy for a moment, not isolated): a unit one of them holds is not
   * asked of the seed, whose upload carries each unit into the swarm once. Default: `usable`.
   */
  soon?: (h: Holder) => boolean;
  /**
   * This node is alone in the swarm (no peer named by the tracker): seed runs go in blob order from the
   * first missing unit, whether the seed holds the units yet or not (see planRun).
   */
  alone?: boolean;
  /** Units in flight in the fetcher for other reasons (on-demand reads): left to them. */
  busy?: (u: number) => boolean;
  rand?: () => number;
  /** The clock (ms), for units deferred until a time; default Date.now() (the simulation passes its own). */
  now?: number;
}

/** Pieces: aligned groups of units of about this many stored bytes, the grain of rarest-first choice. */
const PIECE_BYTES = 1024 * 1024;

/**
 * The next run to fetch for background fill through the P2P tier, BitTorrent style. Choices are made by
 * piece (aligned groups of ~1 MiB of units), so that what is missing stays in whole pieces and runs stay
 * long; a run starts at the first suitable unit of the chosen piece and goes on over the following ones.
 * - From the seed (when a seed slot is free): units no peer holds, not even one busy for a moment (the
 *   seed's upload should carry each unit into the swarm once), and the seed is not already sending to
 *   another peer; preferring pieces the seed holds now (served at once, no registry wait), random among
 *   those, so that nodes starting together ask the seed for different pieces and then trade them; else
 *   one of the first such pieces (where the seed's own in-order fill is fetching: the request joins it);
 *   up to seedRunBytes (small when the swarm is large, so that each unit reaches a peer soon).
 * - Else from peers: the rarest piece that a usable peer holds units of (random among equals), from its
 *   first such unit over the following units a common holder has, up to maxRunBytes.
 * 'wait': units are missing but none can be planned now (the seed slot is taken, the units are on their
 * way to other peers from the seed, or only busy holders have them); undefined: nothing is missing that
 * is not being fetched.
 */
export function planRun(view: PeerView, o: PlanOptions): PlannedRun | 'wait' | undefined {
  const { cache, layout } = view;
  const rand = o.rand ?? Math.random;
  const piece = Math.max(1, Math.floor((PIECE_BYTES * layout.units) / Math.max(1, layout.size)));
  // `open`: not being fetched; `free`: also missing (the scans below walk missing units already)
  const open = (u: number) => !o.claimed.has(u) && !o.busy?.(u);
  const free = (u: number) => !cache.has(u) && open(u);
  const rarity = view.rarities(o.usable);
  // units no holder has, not even one busy for a moment, and not on their way to one: the seed's to send
  const held = o.soon ? view.rarities(o.soon, 1) : rarity;
  const away = view.elsewhere(o.now ?? Date.now());
  const seedable = (u: number) => held[u] === 0 && !away.has(u);
  if (o.alone && o.seed) {
    // Alone, everything comes from the seed, whose link is as thin as this node's: the seed fetches in
    // blob order and forwards each block as it arrives, so asking in that order keeps this node's link
    // carrying what the seed receives. Random pieces, or runs cut where the seed's holdings end, leave
    // blocks waiting at the seed that this node can only take after the seed's last one.
    for (let u = cache.nextMissing(0); u >= 0; u = cache.nextMissing(u + 1)) {
      if (!open(u) || !seedable(u)) continue;
      const run = [u];
      let bytes = layout.length(u);
      for (let v = u + 1; v < layout.units && free(v) && seedable(v); v++) {
        const len = layout.length(v);
        if (bytes + len > o.seedRunBytes) break;
        run.push(v);
        bytes += len;
      }
      return { units: run, from: 'seed' };
    }
  }
  let left = false;
  // per kind, the chosen piece's first suitable unit (reservoir sampling over pieces)
  let peerBest = -1;
  let peerRarity = Infinity;
  let peerTies = 0;
  let seedHeld = -1;
  let seedHeldN = 0;
  let seedOther = -1;
  let seedOtherN = 0;
  // no unit missing here is left for the seed to carry into the swarm (every one is held by a peer): the
  // seed's upload would idle, so one run may come from what it holds, the rarest piece first (random among
  // equals, so that nodes planning at once ask the seed for different pieces)
  let fresh = false;
  let spare = -1;
  let spareRarity = Infinity;
  let spareTies = 0;
  let spareInPiece = false;
  let lastPiece = -1;
  let peerInPiece = false;
  let heldInPiece = false;
  let otherInPiece = false;
  for (let u = cache.nextMissing(0); u >= 0; u = cache.nextMissing(u + 1)) {
    if (!open(u)) continue;
    left = true;
    const p = Math.floor(u / piece);
    if (p !== lastPiece) {
      lastPiece = p;
      peerInPiece = heldInPiece = otherInPiece = spareInPiece = false;
    }
    const r = rarity[u]!;
    if (seedable(u)) fresh = true;
    else if (!fresh && r <= spareRarity && view.seedBits?.has(u) && !away.has(u)) {
      if (r < spareRarity) {
        spare = u;
        spareRarity = r;
        spareTies = 1;
        spareInPiece = true;
      } else if (!spareInPiece) {
        spareInPiece = true;
        if (rand() * ++spareTies < 1) spare = u;
      }
    }
    if (r > 0) {
      // a piece's rarity: that of its rarest unit peers hold; its first such unit starts the run
      if (r < peerRarity) {
        peerBest = u;
        peerRarity = r;
        peerTies = 1;
        peerInPiece = true;
      } else if (r === peerRarity && !peerInPiece) {
        peerInPiece = true;
        if (rand() * ++peerTies < 1) peerBest = u;
      }
    } else if (o.seed && seedable(u)) {
      if (view.seedBits?.has(u)) {
        if (!heldInPiece) {
          heldInPiece = true;
          if (rand() * ++seedHeldN < 1) seedHeld = u;
        }
      } else if (!otherInPiece && seedOtherN < SEED_WINDOW) {
        otherInPiece = true;
        if (rand() * ++seedOtherN < 1) seedOther = u;
      }
    }
  }
  const seedStart = seedHeld >= 0 ? seedHeld : seedOther;
  if (seedStart >= 0) {
    const held = seedHeld >= 0;
    const run = [seedStart];
    let bytes = layout.length(seedStart);
    for (let v = seedStart + 1; v < layout.units && free(v); v++) {
      const len = layout.length(v);
      if (bytes + len > o.seedRunBytes || !seedable(v)) break;
      // one request is either served from the seed's cache or waits for its registry fetch, not both
      if ((view.seedBits?.has(v) ?? false) !== held) break;
      run.push(v);
      bytes += len;
    }
    return { units: run, from: 'seed' };
  }
  if (o.seed && !fresh && spare >= 0) {
    const run = [spare];
    let bytes = layout.length(spare);
    for (let v = spare + 1; v < layout.units && free(v) && view.seedBits!.has(v) && !away.has(v); v++) {
      const len = layout.length(v);
      if (bytes + len > o.seedRunBytes) break;
      run.push(v);
      bytes += len;
    }
    return { units: run, from: 'seed' };
  }
  if (peerBest >= 0) {
    let holders = view.holders.filter((h) => h.bits.has(peerBest) && (!o.usable || o.usable(h)));
    const run = [peerBest];
    let bytes = layout.length(peerBest);
    for (let v = peerBest + 1; v < layout.units && free(v); v++) {
      const len = layout.length(v);
      if (bytes + len > o.maxRunBytes) break;
      const still = holders.filter((h) => h.bits.has(v));
      if (!still.length) break;
      holders = still;
      run.push(v);
      bytes += len;
    }
    return { units: run, from: 'peer' };
  }
  return left ? 'wait' : undefined;
}

/**
 * What p2pFill needs of a fetcher: a layer's UnitFetcher (blocks, verified against the TOC) or the registry
 * mirror's PieceRuns (a raw file's pieces, verified against its piece table).
 */
export interface RunFetcher {
  /** Waits for the next run's turn (on-demand reads go first); returns its largest size in bytes. */
  fillTurn(maxRunBytes: number, signal?: AbortSignal): Promise<number>;
  /** Whether unit u is being fetched for another reason now. */
  inFlight(u: number): boolean;
  /** Fetches, verifies and stores the units, from sources of the kinds in `only`. */
  units(
    units: number[],
    priority: Priority,
    signal?: AbortSignal,
    opts?: { only?: readonly SourceKind[] },
  ): Promise<unknown>;
}

export interface P2pFillOptions {
  /** Largest peer run (stored bytes). Default 4 MiB. */
  maxRunBytes?: number;
  /** Runs in flight at once. Default 6. */
  concurrency?: number;
  /** Asks the tracker for fresh holders (rate-limited by the caller). */
  refresh?: (view: PeerView) => Promise<void>;
  /** Holders that may be asked now (not isolated, not busy). */
  usable?: (h: Holder) => boolean;
  /** Holders that will be asked soon (PlanOptions.soon). */
  soon?: (h: Holder) => boolean;
  /** Told when a run the seed handed back failed at the registry (hand-back.ts). */
  origin?: OriginSwitch;
  /** Pause before planning again when nothing can be planned now (ms). Default 200. */
  waitMs?: number;
  signal?: AbortSignal;
  timers?: Timers;
}

/** How long units the seed deferred count as on their way elsewhere before the tracker confirms it (ms). */
const DEFER_MS = 2000;
/**
 * After a holder refused a run as busy, the worker plans again after this long (ms): at once, workers of
 * a large swarm spin on refusals (in the simulation 50 ms cut them by a third at the same fill times).
 */
const BUSY_RETRY_MS = 50;
/** Smallest seed run: below this, request overhead dominates. */
const MIN_SEED_RUN = 256 * 1024;
/** Seed runs that fail in a row before the planner gives up (the fetcher's own fill takes over). */
const MAX_SEED_FAILURES = 8;

/**
 * Fills a blob through the P2P tier (runs planned by planRun; every block verified by the fetcher): units
 * no peer holds from the seed, one or two runs at a time per node, so that the seed's upload carries each
 * unit about once and nodes trade the rest; everything else from peers, rarest first. Yields to on-demand
 * reads (the fetcher's fill turn). Returns when nothing is left to plan, or when the seed tier is down
 * (no seed up, or repeated failures): the fetcher's own in-order fill then finishes the blob (registry
 * only if no seed is up) and checks its digest. Returns the number of runs that failed.
 */
export async function p2pFill(
  view: PeerView,
  fetcher: RunFetcher,
  opts: P2pFillOptions = {},
): Promise<number> {
  const maxRun = opts.maxRunBytes ?? 4 * 1024 * 1024;
  const timers = opts.timers ?? realTimers;
  const claimed = new Set<number>();
  let seedActive = 0;
  let seedFailures = 0;
  let failures = 0;
  let seedDown = false;
  const worker = async () => {
    for (;;) {
      opts.signal?.throwIfAborted();
      if (seedDown || view.cache.isComplete) return;
      const limit = await fetcher.fillTurn(maxRun, opts.signal);
      // plan with the answer at hand; a fresh one is on its way (the tracker may be slow to answer)
      const fresh = opts.refresh?.(view);
      if (!view.answered) await fresh;
      // alone, a few runs in flight keep the seed's link busy; in a swarm, one each: its upload is shared
      const swarm = view.swarm;
      const alone = swarm === 0 && view.holders.length === 0;
      const seedSlots = swarm === 0 ? 4 : swarm === 1 ? 2 : 1;
      const seedRun = Math.min(limit, Math.max(MIN_SEED_RUN, maxRun / Math.max(4, swarm + 1)));
      const plan = planRun(view, {
        claimed,
        maxRunBytes: limit,
        seedRunBytes: seedRun,
        seed: seedActive < seedSlots,
        alone,
        usable: opts.usable,
        soon: opts.soon,
        busy: (u) => fetcher.inFlight(u),
      });
      view.fill.plans++;
      if (!plan) return;
      if (plan === 'wait') {
        view.fill.waits++;
        await sleep(timers, opts.waitMs ?? 200, opts.signal);
        continue;
      }
      for (const u of plan.units) claimed.add(u);
      const fromSeed = plan.from === 'seed';
      if (fromSeed) seedActive++;
      try {
        try {
          await fetcher.units(plan.units, Priority.Fill, opts.signal, { only: [plan.from] });
        } catch (err) {
          if (!isHandedBack(err)) throw err;
          // the seed's registry link is full and the tracker holds these units for this node: fetched from
          // the registry here (its spare capacity), then announced; the seed slot stays taken meanwhile
          try {
            await fetcher.units(plan.units, Priority.Fill, opts.signal, { only: ['registry'] });
            view.fill.originRuns++;
          } catch (e) {
            opts.signal?.throwIfAborted();
            // this node cannot reach the registry: the seed sends them (asked again without origin=1)
            opts.origin?.failed(e);
            view.fill.failed++;
          }
          continue;
        }
        if (fromSeed) {
          seedFailures = 0;
          view.fill.seedRuns++;
        } else view.fill.peerRuns++;
      } catch (err) {
        opts.signal?.throwIfAborted();
        if (isBusy(err)) {
          // the holder's upload slots are taken: plan again shortly, around it (opts.usable)
          view.fill.busy++;
          await sleep(timers, BUSY_RETRY_MS, opts.signal);
          continue;
        }
        if (isDeferred(err)) {
          // on their way to another node: take them from it later (the tracker will say so)
          view.fill.deferred++;
          view.defer(plan.units, DEFER_MS);
          // and whatever else the seed said it is sending other nodes: the next plan avoids those too
          const away = awayUnits(err).filter((u) => u < view.layout.units);
          if (away.length) view.defer(away, DEFER_MS);
          continue;
        }
        failures++;
        view.fill.failed++;
        if (fromSeed && (isSourceUnavailable(err) || ++seedFailures >= MAX_SEED_FAILURES)) seedDown = true;
        // the failed holder is dropped or isolated by the source; do not spin on a bad answer
        else await sleep(timers, opts.waitMs ?? 200, opts.signal);
      } finally {
        for (const u of plan.units) claimed.delete(u);
        if (fromSeed) seedActive--;
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency ?? 6 }, worker));
  return failures;
}
