/**
 * A discrete-event simulation of one layer spreading to N hosts through dfnode's P2P tier, driving the real
 * planner (src/p2p/fill-planner.ts `planRun`, with the real PeerView) and the real tracker
 * (src/p2p/tracker-state.ts `TrackerState`, announces and lookups as the nodes send them) on a virtual
 * clock. What is simulated: links (fluid flows; each flow gets the smaller of its sender's upload share and
 * its receiver's download share), request latency, the seed's registry fetches, and optionally one shared
 * machine's CPU (hosts that share 2 cores, as bench/p2p does). What is not: TCP dynamics, on-demand reads,
 * failures, several blobs at once.
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
import { TrackerState, type TrackerStateOptions } from '../../src/p2p/tracker-state.js';
import { DEFAULT_TRACKER_LIMITS } from '../../src/p2p/tracker-limits.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';
import type { Timers } from '../../src/util/timers.js';
import { transferTimeoutMs } from '../../src/util/transfer-timeout.js';

export interface SimParams {
  hosts: number;
  /** Stored bytes of the layer's blocks (the TOC unit comes on top). */
  blobBytes: number;
  unitBytes: number;
  /** Each node's link, up and down (Mbit/s); the seed's; the registry's. */
  nodeMbit: number;
  seedMbit: number;
  registryMbit: number;
  /** Round trip of a request before its first byte (ms). */
  rttMs: number;
  /** p2p.peerTimeoutMs: a peer request is abandoned after this plus its size at 64 KiB/s (as the node does). */
  peerTimeoutMs: number;
  /** Fill runs in flight per node (p2pFill concurrency). */
  concurrency: number;
  maxRunBytes: number;
  /** Hosts share one machine with this many cores (0: every host has its own CPU, never the limit). */
  machineCores: number;
  /** CPU seconds per GiB a node spends receiving, and a sender (node or seed) spends sending. */
  cpuRecvSecPerGiB: number;
  cpuSendSecPerGiB: number;
  /** Hosts start within this window (ms), uniformly. */
  startSpreadMs: number;
  /** The tracker's peers-per-blob bound (its default is DEFAULT_TRACKER_LIMITS.maxPeersPerBlob). */
  maxPeersPerBlob: number;
  rngSeed: number;
  /** Give up after this much virtual time (ms). */
  limitMs: number;
  /** Flow rates are recomputed (and transfers end) every this many ms. */
  stepMs: number;
}

export const DEFAULT_SIM: SimParams = {
  hosts: 4,
  blobBytes: 64 << 20,
  unitBytes: 64 << 10,
  nodeMbit: 20,
  seedMbit: 20,
  registryMbit: 40,
  rttMs: 2,
  peerTimeoutMs: 2000,
  concurrency: 6,
  maxRunBytes: 4 << 20,
  machineCores: 0,
  cpuRecvSecPerGiB: 0,
  cpuSendSecPerGiB: 0,
  startSpreadMs: 0,
  maxPeersPerBlob: DEFAULT_TRACKER_LIMITS.maxPeersPerBlob,
  rngSeed: 1,
  limitMs: 3_600_000,
  stepMs: 50,
};

export interface SimResult {
  params: SimParams;
  /** Fill time of each node that finished (s), from its start. */
  times: number[];
  finished: number;
  meanS: number;
  maxS: number;
  /** Registry bytes sent / blob size. */
  registryEgress: number;
  /** Share of the nodes' received bytes by source. */
  fromPeers: number;
  fromSeed: number;
  seedUploadBytes: number;
  announces: number;
  lookups: number;
  /** Announces the tracker refused (its bounds: a swarm larger than maxPeersPerBlob). */
  refusedAnnounces: number;
  /** Peer requests abandoned at their timeout (the holder is then isolated for a while). */
  peerTimeouts: number;
  /** Wall time of the real tracker code per call (µs, mean) and the bitmap bytes it held at the peak. */
  announceUs: number;
  lookupUs: number;
  trackerBitmapBytes: number;
  /** Wall time of the real planner per plan (µs, mean) and plans made. */
  planUs: number;
  plans: number;
  events: number;
  wallMs: number;
}

/** The seed's registry fetches: this many at once, of this many bytes (short: blocks become available as they stream). */
const SEED_FETCHES = 8;
const SEED_FETCH_BYTES = 256 << 10;

/** mulberry32: a small seeded generator (runs are repeatable). */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A binary min-heap under `less`. */
class MinHeap<T> {
  private readonly h: T[] = [];
  constructor(private readonly less: (a: T, b: T) => boolean) {}
  get size(): number {
    return this.h.length;
  }
  push(x: T): void {
    const h = this.h;
    h.push(x);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (this.less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }
  pop(): T | undefined {
    const h = this.h;
    if (!h.length) return undefined;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
        if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    return top;
  }
}

/** Events by time, then by insertion order. */
class EventQueue {
  private readonly heap = new MinHeap<{ t: number; seq: number; fn: () => void }>(
    (a, b) => a.t < b.t || (a.t === b.t && a.seq < b.seq),
  );
  private seq = 0;
  push(t: number, fn: () => void): void {
    this.heap.push({ t, seq: this.seq++, fn });
  }
  pop(): { t: number; fn: () => void } | undefined {
    return this.heap.pop();
  }
}

interface Endpoint {
  name: string;
  up: number; // bytes per ms
  down: number;
  ups: Set<Flow>;
  downs: Set<Flow>;
  /** CPU s per byte this host spends sending. */
  sendCost: number;
}

interface Flow {
  src: Endpoint;
  dst: Endpoint;
  remaining: number;
  rate: number;
  done: () => void;
}

/** The cache side of a simulated node: what PeerView and planRun read (a bitmap of units). */
class SimCache {
  readonly bits: Bitmap;
  constructor(units: number) {
    this.bits = new Bitmap(units);
  }
  has(u: number): boolean {
    return this.bits.has(u);
  }
  nextMissing(from = 0): number {
    return this.bits.nextClear(from);
  }
  snapshot(): Uint8Array {
    return this.bits.bits.slice();
  }
  get isComplete(): boolean {
    return this.bits.full;
  }
}

interface SimNode {
  id: string;
  ep: Endpoint;
  cache: SimCache;
  view: PeerView;
  claimed: Set<number>;
  seedActive: number;
  uploads: number;
  start: number;
  end: number;
  announced: Uint8Array | undefined;
  announceSoon: boolean;
  lastLookup: number;
  refused: boolean;
  isolation: Isolation;
  /** This node's requests in flight per holder (the real source picks the holder with the fewest). */
  busy: Map<string, number>;
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
  const mbit = (m: number) => (m * 1e6) / 8 / 1000; // bytes per ms
  const blocks = Math.ceil(p.blobBytes / p.unitBytes);
  const tocBytes = 64 << 10;
  const size = blocks * p.unitBytes + tocBytes;
  const toc = { blockCount: blocks, blockOffset: (i: number) => i * p.unitBytes } as unknown as Toc;
  const layout = new UnitLayout(toc, size);
  const units = layout.units;
  const blob = { digest: `sha256:${'5'.repeat(64)}`, size };
  const gib = 1024 ** 3;

  // --- links (fluid flows) and the shared CPU ---------------------------------------------------------
  const flows = new Set<Flow>();
  const endpoint = (name: string, m: number, sendSecPerGiB: number): Endpoint => ({
    name,
    up: mbit(m),
    down: mbit(m),
    ups: new Set(),
    downs: new Set(),
    sendCost: sendSecPerGiB / gib,
  });
  const recvCost = p.cpuRecvSecPerGiB / gib;
  /**
   * Max-min fair rates for every flow (progressive filling: the link whose equal share is smallest is
   * saturated first, its flows frozen at that share, and so on), as TCP flows sharing links roughly get;
   * then, when one machine's CPU is shared, all rates scaled down to what its cores can move.
   */
  const rerate = () => {
    const rem = new Map<Endpoint, { up: number; upN: number; down: number; downN: number }>();
    const res = (e: Endpoint) => {
      let r = rem.get(e);
      if (!r) rem.set(e, (r = { up: e.up, upN: 0, down: e.down, downN: 0 }));
      return r;
    };
    for (const f of flows) {
      res(f.src).upN++;
      res(f.dst).downN++;
    }
    // a heap of (share, endpoint, direction); shares only grow as flows freeze, so stale entries are skipped
    const heap = new MinHeap<{ share: number; e: Endpoint; up: boolean }>((x, y) => x.share < y.share);
    const push = (x: { share: number; e: Endpoint; up: boolean }) => heap.push(x);
    for (const [e, r] of rem) {
      if (r.upN) push({ share: r.up / r.upN, e, up: true });
      if (r.downN) push({ share: r.down / r.downN, e, up: false });
    }
    const frozen = new Map<Flow, number>();
    for (let x = heap.pop(); x; x = heap.pop()) {
      const r = rem.get(x.e)!;
      const n = x.up ? r.upN : r.downN;
      if (!n) continue;
      const share = (x.up ? r.up : r.down) / n;
      if (share > x.share + 1e-12) {
        push({ share, e: x.e, up: x.up });
        continue;
      }
      for (const f of x.up ? x.e.ups : x.e.downs) {
        if (frozen.has(f)) continue;
        frozen.set(f, share);
        const s2 = rem.get(f.src)!;
        const d2 = rem.get(f.dst)!;
        s2.up -= share;
        s2.upN--;
        d2.down -= share;
        d2.downN--;
        const other = x.up ? f.dst : f.src;
        const o = x.up ? d2 : s2;
        const on = x.up ? o.downN : o.upN;
        if (on > 0) push({ share: (x.up ? o.down : o.up) / on, e: other, up: !x.up });
      }
    }
    let scale = 1;
    if (p.machineCores > 0) {
      let demand = 0;
      for (const [f, r] of frozen) demand += r * 1000 * (f.src.sendCost + recvCost);
      if (demand > p.machineCores) scale = p.machineCores / demand;
    }
    for (const [f, r] of frozen) f.rate = r * scale;
  };
  /**
   * Time steps of `stepMs`: every flow moves rate × step bytes, finished flows end (their callbacks start the
   * next requests), then the rates are computed again for the flows now running. A flow therefore starts
   * and ends on a step boundary (stepMs of resolution, small against runs of seconds), and the cost of the
   * max-min computation is paid once per step, not once per event.
   */
  let stepping = false;
  const step = () => {
    const ended: Flow[] = [];
    for (const f of flows) {
      f.remaining -= f.rate * p.stepMs;
      if (f.remaining <= 1e-6) ended.push(f);
    }
    for (const f of ended) {
      flows.delete(f);
      f.src.ups.delete(f);
      f.dst.downs.delete(f);
    }
    for (const f of ended) f.done();
    rerate();
    if (flows.size || pendingStarts > 0) at(now + p.stepMs, step);
    else stepping = false;
  };
  let pendingStarts = 0;
  const startStepping = () => {
    if (stepping) return;
    stepping = true;
    at(Math.ceil(now / p.stepMs) * p.stepMs + p.stepMs, step);
  };

  /** Starts a transfer after the request's round trip; the returned function cancels it (a timeout). */
  const transfer = (src: Endpoint, dst: Endpoint, bytes: number, done: () => void): (() => void) => {
    let flow: Flow | undefined;
    let cancelled = false;
    pendingStarts++;
    startStepping();
    at(now + p.rttMs, () => {
      pendingStarts--;
      if (cancelled) return;
      const f: Flow = { src, dst, remaining: bytes, rate: 0, done };
      flow = f;
      flows.add(f);
      src.ups.add(f);
      dst.downs.add(f);
      startStepping();
    });
    return () => {
      cancelled = true;
      if (!flow || !flows.has(flow)) return;
      flows.delete(flow);
      flow.src.ups.delete(flow);
      flow.dst.downs.delete(flow);
    };
  };

  // --- tracker, seed and registry ---------------------------------------------------------------------
  const registry = endpoint('registry', p.registryMbit, p.cpuSendSecPerGiB);
  const seedEp = endpoint('seed', p.seedMbit, p.cpuSendSecPerGiB);
  const seedBits = new Bitmap(units);
  const trackerOpts: TrackerStateOptions = {
    announceIntervalMs: 1000,
    seedBits: () => seedBits.bits,
    limits: { maxPeersPerBlob: p.maxPeersPerBlob, maxPeerIds: Math.max(65_536, p.hosts * 2) },
    timers,
  };
  const tracker = new TrackerState(trackerOpts);
  let announceUs = 0;
  let lookupUs = 0;
  let planUs = 0;
  let plans = 0;
  let refusedAnnounces = 0;
  let peakBitmapBytes = 0;
  let registryBytes = 0;
  let seedUpload = 0;
  let fromPeers = 0;
  let fromSeed = 0;
  let peerTimeouts = 0;

  // The seed fills the blob from the registry in order (SEED_FETCHES runs of SEED_FETCH_BYTES at a time: the
  // real seed verifies and forwards each block as it streams in, which short runs approximate), fetching units a
  // node asked for first; a node's run of units the seed does not hold starts when its first unit is in
  // (cut-through: the seed forwards each block as it arrives; its registry link is at least as fast as
  // its share of its upload here, so the forwarded flow does not overtake the arriving one).
  const seedWaiters: { units: number[]; go: () => void }[] = [];
  const seedFetching = new Set<number>();
  const urgent: number[] = [];
  let seedFills = 0;
  let seedNext = 0;
  const seedPump = () => {
    while (seedFills < SEED_FETCHES) {
      let first = -1;
      while (urgent.length && first < 0) {
        const u = urgent.shift()!;
        if (!seedBits.has(u) && !seedFetching.has(u)) first = u;
      }
      if (first < 0) {
        while (seedNext < units && (seedBits.has(seedNext) || seedFetching.has(seedNext))) seedNext++;
        if (seedNext >= units) return;
        first = seedNext;
      }
      const run: number[] = [];
      let bytes = 0;
      for (let u = first; u < units && !seedBits.has(u) && !seedFetching.has(u); u++) {
        if (bytes + layout.length(u) > SEED_FETCH_BYTES && run.length) break;
        run.push(u);
        bytes += layout.length(u);
      }
      for (const u of run) seedFetching.add(u);
      seedFills++;
      registryBytes += bytes;
      transfer(registry, seedEp, bytes, () => {
        seedFills--;
        for (const u of run) {
          seedFetching.delete(u);
          seedBits.set(u);
        }
        for (let i = seedWaiters.length - 1; i >= 0; i--) {
          const w = seedWaiters[i]!;
          if (seedBits.has(w.units[0]!)) {
            seedWaiters.splice(i, 1);
            w.go();
          }
        }
        seedPump();
      });
    }
  };

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
      start: p.startSpreadMs > 0 ? rand() * p.startSpreadMs : 0,
      end: -1,
      announced: undefined,
      announceSoon: false,
      lastLookup: -Infinity,
      refused: false,
      isolation: new Isolation({ baseMs: 5000, maxMs: 300_000, timers }),
      busy: new Map(),
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
  const lookup = (n: SimNode) => {
    if (now - n.lastLookup < 250 || n.cache.isComplete) return;
    n.lastLookup = now;
    const t0 = performance.now();
    try {
      const a = tracker.lookup({
        blob: blob.digest,
        peer_id: n.id,
        zone: '',
        want: [],
        max_peers: 32,
        want_bitmap: n.view.missing(),
      });
      n.view.setHolders(a);
    } catch {
      // refused (e.g. the tracker's tables are full): the node goes on with what it knew
    }
    lookupUs += (performance.now() - t0) * 1000;
  };
  const soon = (n: SimNode, i: number) => {
    if (n.announceSoon) return;
    n.announceSoon = true;
    at(now + 100, () => {
      n.announceSoon = false;
      announce(n, i);
    });
  };
  const tick = (n: SimNode, i: number) => {
    if (n.end >= 0) return;
    announce(n, i);
    lookup(n);
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

  const worker = (n: SimNode, i: number) => {
    if (n.end >= 0 || now > p.limitMs) return;
    lookup(n);
    const swarm = n.view.swarm;
    const seedSlots = swarm === 0 ? 4 : swarm === 1 ? 2 : 1;
    const seedRun = Math.min(p.maxRunBytes, Math.max(256 << 10, p.maxRunBytes / Math.max(4, swarm + 1)));
    const usable = (h: Holder) => byId.get(h.id) !== n && !n.isolation.isolated(h.id);
    const t0 = performance.now();
    const plan = planRun(n.view, {
      claimed: n.claimed,
      maxRunBytes: p.maxRunBytes,
      seedRunBytes: seedRun,
      seed: n.seedActive < seedSlots,
      usable,
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
        transfer(seedEp, n.ep, bytes, () => {
          seedUpload += bytes;
          fromSeed += bytes;
          n.seedActive--;
          release();
          finishUnits(n, i, us);
          worker(n, i);
        });
      if (seedBits.has(us[0]!)) go();
      else {
        for (const u of us) if (!seedBits.has(u)) urgent.push(u);
        seedWaiters.push({ units: us, go });
        seedPump();
      }
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
    holder.uploads++;
    n.busy.set(holder.id, (n.busy.get(holder.id) ?? 0) + 1);
    let settled = false;
    const end = () => {
      settled = true;
      holder.uploads--;
      n.busy.set(holder.id, (n.busy.get(holder.id) ?? 1) - 1);
      release();
    };
    const cancel = transfer(holder.ep, n.ep, bytes, () => {
      if (settled) return;
      end();
      n.isolation.ok(holder.id);
      fromPeers += bytes;
      finishUnits(n, i, us);
      worker(n, i);
    });
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
      announce(n, i);
      lookup(n);
      at(now + 1000, () => tick(n, i));
      for (let k = 0; k < p.concurrency; k++) worker(n, i);
    }),
  );
  seedPump();

  for (let e = q.pop(); e; e = q.pop()) {
    if (e.t > p.limitMs) break;
    now = e.t;
    events++;
    e.fn();
    if (finishedNodes === nodes.length && !flows.size) break;
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
    registryEgress: registryBytes / size,
    fromPeers: received ? fromPeers / received : 0,
    fromSeed: received ? fromSeed / received : 0,
    seedUploadBytes: seedUpload,
    announces: tracker.counters.announces,
    lookups: tracker.counters.lookups,
    refusedAnnounces,
    peerTimeouts,
    announceUs: announceUs / Math.max(1, tracker.counters.announces),
    lookupUs: lookupUs / Math.max(1, tracker.counters.lookups),
    trackerBitmapBytes: peakBitmapBytes,
    planUs: planUs / Math.max(1, plans),
    plans,
    events,
    wallMs: performance.now() - wall0,
  };
}
