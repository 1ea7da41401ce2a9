/**
 * A discrete-event simulation of one layer spreading to N hosts through dfnode's P2P tier, driving the real
 * planner (src/p2p/fill-planner.ts `planRun`, with the real PeerView), the real tracker
 * (src/p2p/tracker-state.ts `TrackerState`, announces and lookups as the nodes send them) and the block
 * server's upload slots (src/p2p/upload-slots.ts `UploadSlots`) on a virtual clock. What is simulated:
 * links (bench/lib/sim-links.ts: fluid flows; each flow gets the smaller of its sender's upload share and
 * its receiver's download share), request latency, the seed's registry fetches (bench/lib/sim-seed.ts),
 * and optionally one shared machine's CPU (hosts that share 2 cores, as bench/p2p does). What is not: TCP
 * dynamics, on-demand reads, failures, several blobs at once.
 *
 * The node side follows p2pFill (src/p2p/fill-planner.ts) step by step: `concurrency` workers that plan a run
 * each (seed slots: 4 alone, 2 with one other peer, else 1; seed runs of max(256 KiB, 4 MiB / (peers + 1))),
 * lookups at most every 250 ms, announces 100 ms after new units and every second. The seed answers a
 * planned run with a deferral when the tracker says another peer is being sent those units (as the seed's
 * block server does), and its tracker is told which units it sends to whom.
 */
import { Bitmap } from '../../src/cache/bitmap.js';
import type { BlobCache } from '../../src/cache/blob-cache.js';
import type { Toc } from '../../src/blob/toc.js';
import { planRun } from '../../src/p2p/fill-planner.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { PeerView, type Holder } from '../../src/p2p/peer-view.js';
import { UploadSlots } from '../../src/p2p/upload-slots.js';
import { TrackerState, type TrackerStateOptions } from '../../src/p2p/tracker-state.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';
import type { Timers } from '../../src/util/timers.js';
import { transferTimeoutMs } from '../../src/util/transfer-timeout.js';
import { EventQueue, midRunStore, rng, SimCache, type Endpoint } from './sim-core.js';
import { FluidLinks } from './sim-links.js';
import { SimSeedFill } from './sim-seed.js';
import type { SimParams, SimResult } from './p2p-sim-params.js';

export { DEFAULT_SIM, type SimParams, type SimResult } from './p2p-sim-params.js';

interface SimNode {
  id: string;
  ep: Endpoint;
  cache: SimCache;
  view: PeerView;
  claimed: Set<number>;
  seedActive: number;
  /** Peer runs this node sends that hold a slot (its load). */
  uploads: number;
  /** Its upload slots, the block server's (with the wait of SimParams.slotWaitMs, on the virtual clock). */
  slots: UploadSlots;
  start: number;
  end: number;
  announced: Uint8Array | undefined;
  announceSoon: boolean;
  /** Bumped by every call: a pending announce of new units that a call took along does not go again. */
  soonGen: number;
  lastLookup: number;
  refused: boolean;
  isolation: Isolation;
  /** This node's requests in flight per holder (the real source picks the holder with the fewest). */
  busy: Map<string, number>;
  /** Holders that answered "all upload slots taken" → until when (ms) they are not asked. */
  full: Map<string, number>;
}

export function simulate(p: SimParams): SimResult {
  const wall0 = performance.now();
  const rand = rng(p.rngSeed);
  const q = new EventQueue();
  let now = 0;
  let events = 0;
  const at = (t: number, fn: () => void) => q.push(t, fn);
  const timers: Timers = {
    now: () => now,
    setTimeout: (fn, ms) => {
      at(now + ms, fn);
      return undefined;
    },
    clearTimeout: () => undefined,
  };
  const blocks = Math.ceil(p.blobBytes / p.unitBytes);
  const tocBytes = 64 << 10;
  const size = blocks * p.unitBytes + tocBytes;
  const toc = { blockCount: blocks, blockOffset: (i: number) => i * p.unitBytes } as unknown as Toc;
  const layout = new UnitLayout(toc, size);
  const units = layout.units;
  const blob = { digest: `sha256:${'5'.repeat(64)}`, size };

  // --- links (fluid flows) and the shared CPU ---------------------------------------------------------
  const links = new FluidLinks({ ...p, now: () => now, at });
  const endpoint = links.endpoint.bind(links);
  const transfer = links.transfer.bind(links);

  // --- tracker, seed and registry ---------------------------------------------------------------------
  const registry = endpoint('registry', p.registryMbit, p.cpuSendSecPerGiB);
  const seedEp = endpoint('seed', p.seedMbit, p.cpuSendSecPerGiB);
  const seedBits = new Bitmap(units);
  const trackerOpts: TrackerStateOptions = {
    announceIntervalMs: 1000,
    seedBits: () => seedBits.bits,
    limits: {
      maxPeersPerBlob: p.maxPeersPerBlob,
      lookupCandidates: p.lookupCandidates,
      maxPeerIds: Math.max(65_536, p.hosts * 2),
    },
    timers,
    random: rand,
  };
  const tracker = new TrackerState(trackerOpts);
  let announceUs = 0;
  let lookupUs = 0;
  let planUs = 0;
  let plans = 0;
  let refusedAnnounces = 0;
  let peakBitmapBytes = 0;
  let seedUpload = 0;
  let fromPeers = 0;
  let fromSeed = 0;
  let peerTimeouts = 0;
  let refusedBusy = 0;
  /** Peer runs that waited for a holder's upload slot (served or refused after the wait). */
  let slotWaits = 0;
  let carriedLookups = 0;
  let peerRuns = 0;
  let seedRuns = 0;

  // the seed fills the blob from the registry (bench/lib/sim-seed.ts)
  const seedFill = new SimSeedFill({
    units,
    length: (u) => layout.length(u),
    bits: seedBits,
    fetch: (bytes, done) => transfer(registry, seedEp, bytes, done),
  });

  // --- nodes ------------------------------------------------------------------------------------------
  const nodes: SimNode[] = [];
  for (let i = 0; i < p.hosts; i++) {
    const cache = new SimCache(units);
    const ep = endpoint(`node${i}`, p.nodeMbit, p.cpuSendSecPerGiB);
    const view = new PeerView(blob, layout, cache as unknown as BlobCache);
    nodes.push({
      id: (i + 1).toString(16).padStart(16, '0'),
      ep,
      cache,
      view,
      claimed: new Set(),
      seedActive: 0,
      uploads: 0,
      slots: new UploadSlots(p.uploadSlots, { waitMs: p.slotWaitMs, maxWaiters: p.slotWaiters, timers }),
      start: p.startSpreadMs > 0 ? rand() * p.startSpreadMs : 0,
      end: -1,
      announced: undefined,
      announceSoon: false,
      soonGen: 0,
      lastLookup: -Infinity,
      refused: false,
      isolation: new Isolation({ baseMs: 5000, maxMs: 300_000, timers }),
      busy: new Map(),
      full: new Map(),
    });
  }
  const byId = new Map(nodes.map((n) => [n.id, n]));
  let finishedNodes = 0;
  const addressOf = (i: number) => `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:7700`;

  const announce = (n: SimNode, i: number) => {
    const bits = n.cache.snapshot();
    const prev = n.announced;
    const full = !prev;
    const added: number[] = [];
    if (prev)
      for (let k = 0; k < bits.length; k++) {
        const d = bits[k]! & ~prev[k]!;
        if (d) for (let b = 0; b < 8; b++) if (d & (1 << b)) added.push(k * 8 + b);
      }
    const t0 = performance.now();
    try {
      const r = tracker.announce({
        blob: blob.digest,
        units,
        peer_id: n.id,
        address: addressOf(i),
        zone: '',
        load: n.uploads,
        full,
        bitmap: full ? bits : new Uint8Array(0),
        added,
        leave: false,
        failed_peers: [],
      });
      n.announced = r.need_full ? undefined : bits;
      n.refused = false;
    } catch {
      refusedAnnounces++;
      n.refused = true;
      n.announced = undefined;
    }
    announceUs += (performance.now() - t0) * 1000;
    peakBitmapBytes = Math.max(peakBitmapBytes, tracker.size.bitmapBytes);
  };
  /**
   * One tracker call as P2pNode makes it: an announce of what the node has (a pending announce of new units
   * goes now, with it), carrying a lookup when one was asked for and is due (answerAnnounce).
   */
  const call = (n: SimNode, i: number, look: boolean) => {
    n.soonGen++;
    n.announceSoon = false;
    announce(n, i);
    if (!look || now - n.lastLookup < p.lookupGapMs || n.cache.isComplete) return;
    n.lastLookup = now;
    carriedLookups++;
    const want = n.view.missing();
    const t0 = performance.now();
    try {
      const a = tracker.lookup({
        blob: blob.digest,
        peer_id: n.id,
        zone: '',
        want: [],
        max_peers: 32,
        want_bitmap: want,
      });
      lookupUs += (performance.now() - t0) * 1000; // the tracker's part only; the node's is its own CPU
      n.view.setHolders(a);
    } catch {
      // refused (e.g. the tracker's tables are full): the node goes on with what it knew
      lookupUs += (performance.now() - t0) * 1000;
    }
  };
  /** Asks for holders when a lookup is due (at most every lookupGapMs): a call. */
  const lookup = (n: SimNode, i: number): boolean => {
    if (now - n.lastLookup < p.lookupGapMs || n.cache.isComplete) return false;
    call(n, i, true);
    return true;
  };
  const soon = (n: SimNode, i: number) => {
    if (n.announceSoon) return;
    n.announceSoon = true;
    const gen = n.soonGen;
    at(now + p.announceDelayMs, () => {
      if (gen === n.soonGen) call(n, i, false);
    });
  };
  const tick = (n: SimNode, i: number) => {
    if (n.end >= 0) return;
    if (!lookup(n, i)) call(n, i, false);
    at(now + 1000, () => tick(n, i));
  };
  const finishUnits = (n: SimNode, i: number, us: number[]) => {
    for (const u of us) n.cache.bits.set(u);
    soon(n, i);
    if (n.cache.isComplete && n.end < 0) {
      n.end = now;
      finishedNodes++;
      announce(n, i);
    }
  };

  /** A node's run as RunWriter stores it: arrived units in the cache (and announced) per midRunBytes. */
  const midRun = (n: SimNode, i: number, us: number[], bytes: number) =>
    midRunStore(
      us,
      (u) => layout.length(u),
      bytes,
      p.midRunBytes,
      (stored) => {
        for (const u of stored) n.cache.bits.set(u);
        soon(n, i);
      },
    );

  const worker = (n: SimNode, i: number) => {
    if (n.end >= 0 || now > p.limitMs) return;
    lookup(n, i);
    const swarm = n.view.swarm;
    const seedSlots = swarm === 0 ? 4 : swarm === 1 ? 2 : 1;
    const seedRun = Math.min(p.maxRunBytes, Math.max(256 << 10, p.maxRunBytes / Math.max(4, swarm + 1)));
    const soon = (h: Holder) => byId.get(h.id) !== n && !n.isolation.isolated(h.id);
    const usable = (h: Holder) => soon(h) && !((n.full.get(h.id) ?? 0) > now);
    const t0 = performance.now();
    const plan = planRun(n.view, {
      claimed: n.claimed,
      maxRunBytes: p.maxRunBytes,
      seedRunBytes: seedRun,
      seed: n.seedActive < seedSlots,
      // as p2pFill: a node the tracker names no peer for asks the seed in blob order
      alone: swarm === 0 && n.view.holders.length === 0,
      usable,
      soon,
      rand,
      now,
    });
    planUs += (performance.now() - t0) * 1000;
    plans++;
    if (!plan) return;
    if (plan === 'wait') {
      at(now + 200, () => worker(n, i));
      return;
    }
    const us = plan.units;
    const bytes = us.reduce((a, u) => a + layout.length(u), 0);
    for (const u of us) n.claimed.add(u);
    const release = () => {
      for (const u of us) n.claimed.delete(u);
    };
    if (plan.from === 'seed') {
      if (tracker.pendingAtOthers(blob.digest, n.id, us)) {
        // deferred by the seed: those units are on their way to another node
        release();
        n.view.defer(us, 2000, now);
        at(now + p.rttMs, () => worker(n, i));
        return;
      }
      tracker.assume(blob.digest, n.id, us);
      n.seedActive++;
      const go = () =>
        transfer(
          seedEp,
          n.ep,
          bytes,
          () => {
            tracker.delivered(blob.digest, n.id, us[0]!, us[us.length - 1]!);
            seedUpload += bytes;
            seedRuns++;
            fromSeed += bytes;
            n.seedActive--;
            release();
            finishUnits(n, i, us);
            worker(n, i);
          },
          midRun(n, i, us, bytes),
        );
      seedFill.whenHeld(us, go);
      return;
    }
    // from a peer: as PeerBlockSource picks, of the usable holders of the whole run the one with the fewest
    // of this node's requests in flight (random among equals); abandoned after the size-scaled timeout
    const holders = n.view
      .holdersOf(us[0]!, us[us.length - 1]!)
      .filter((h) => usable(h) && !n.isolation.isolated(h.id));
    const cand = holders
      .map((h) => byId.get(h.id))
      .filter((x): x is SimNode => !!x && us.every((u) => x.cache.has(u)));
    if (!cand.length) {
      release();
      at(now + 200, () => worker(n, i));
      return;
    }
    let best = cand[0]!;
    let ties = 1;
    for (const h of cand.slice(1)) {
      const d = (n.busy.get(h.id) ?? 0) - (n.busy.get(best.id) ?? 0);
      if (d < 0 || (d === 0 && rand() * ++ties < 1)) {
        if (d < 0) ties = 1;
        best = h;
      }
    }
    const holder = best;
    const refuse = () => {
      // refused (429 busy): not a failure; that holder is left alone for a moment
      release();
      n.full.set(holder.id, now + p.busyBackoffMs);
      refusedBusy++;
      at(now + p.rttMs + p.busyRetryMs, () => worker(n, i));
    };
    // a slot at once, one handed over within the wait (by freeSlot below), or refused
    const waiting = holder.slots.waiting;
    holder.slots.take((ok) => (ok ? serve(n, i, us, bytes, holder, release) : refuse()));
    if (holder.slots.waiting > waiting) slotWaits++;
  };

  /** Node `n`'s worker `i` is sent units `us` (`bytes`) by `holder`, whose upload slot it holds. */
  const serve = (
    n: SimNode,
    i: number,
    us: number[],
    bytes: number,
    holder: SimNode,
    release: () => void,
  ) => {
    holder.uploads++;
    n.busy.set(holder.id, (n.busy.get(holder.id) ?? 0) + 1);
    let settled = false;
    // the holder's slot: free once the rest of the run is in its socket's send buffer; the first run that
    // waits for one takes it over
    let slotHeld = true;
    const freeSlot = () => {
      if (!slotHeld) return;
      slotHeld = false;
      holder.uploads--;
      holder.slots.release();
    };
    const end = () => {
      settled = true;
      freeSlot();
      n.busy.set(holder.id, (n.busy.get(holder.id) ?? 1) - 1);
      release();
    };
    const stored = midRun(n, i, us, bytes);
    const cancel = transfer(
      holder.ep,
      n.ep,
      bytes,
      () => {
        if (settled) return;
        end();
        n.isolation.ok(holder.id);
        fromPeers += bytes;
        peerRuns++;
        finishUnits(n, i, us);
        worker(n, i);
      },
      (remaining) => {
        stored?.(remaining);
        if (remaining <= p.sendBufferBytes) freeSlot();
      },
    );
    at(now + transferTimeoutMs(p.peerTimeoutMs, bytes), () => {
      if (settled) return;
      cancel();
      end();
      peerTimeouts++;
      n.isolation.fail(holder.id, 'TIMEOUT');
      n.view.holders = n.view.holders.filter((h) => h.id !== holder.id);
      at(now + 200, () => worker(n, i));
    });
  };

  nodes.forEach((n, i) =>
    at(n.start, () => {
      if (!lookup(n, i)) call(n, i, false);
      at(now + 1000, () => tick(n, i));
      for (let k = 0; k < p.concurrency; k++) worker(n, i);
    }),
  );
  seedFill.pump();

  for (let e = q.pop(); e; e = q.pop()) {
    if (e.t > p.limitMs) break;
    now = e.t;
    events++;
    e.fn();
    if (finishedNodes === nodes.length && !links.active) break;
  }

  const done = nodes.filter((n) => n.end >= 0);
  const times = done.map((n) => (n.end - n.start) / 1000);
  const received = fromPeers + fromSeed;
  return {
    params: p,
    times,
    finished: done.length,
    meanS: times.reduce((a, b) => a + b, 0) / Math.max(1, times.length),
    maxS: Math.max(0, ...times),
    registryEgress: seedFill.registryBytes / size,
    fromPeers: received ? fromPeers / received : 0,
    fromSeed: received ? fromSeed / received : 0,
    seedUploadBytes: seedUpload,
    announces: tracker.counters.announces,
    lookups: tracker.counters.lookups,
    calls: tracker.counters.announces + tracker.counters.lookups - carriedLookups,
    refusedAnnounces,
    peerTimeouts,
    busyRefusals: refusedBusy,
    slotWaits,
    peerRuns,
    seedRuns,
    peakNodeUploads: Math.max(0, ...nodes.map((n) => n.ep.peakUps)),
    announceUs: announceUs / Math.max(1, tracker.counters.announces),
    lookupUs: lookupUs / Math.max(1, tracker.counters.lookups),
    trackerBitmapBytes: peakBitmapBytes,
    planUs: planUs / Math.max(1, plans),
    plans,
    events,
    wallMs: performance.now() - wall0,
  };
}
