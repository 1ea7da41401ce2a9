import { Bitmap } from '../cache/bitmap.js';
import { DfError } from '../errors.js';
import { realTimers, type Timers } from '../util/timers.js';
import {
  checkAddress,
  checkBitmap,
  checkBlob,
  checkPeerId,
  checkUnits,
  checkZone,
  DEFAULT_TRACKER_LIMITS,
  full,
  isPeerId,
  loadOf,
  unitList,
  type TrackerLimits,
} from './tracker-limits.js';

import type { AnnounceMsg, LookupAnswer, LookupMsg } from './tracker-messages.js';
import type { TrackerStateOptions } from './tracker-limits.js';

export type { AnnounceMsg, HolderMsg, LookupAnswer, LookupMsg } from './tracker-messages.js';
export type { TrackerStateOptions } from './tracker-limits.js';

interface PeerEntry {
  id: string;
  /** Where the entry sits in its blob's `list`. */
  index: number;
  address: string;
  zone: string;
  load: number;
  bits: Bitmap;
  lastSeen: number;
  /** Unit → when the seed's response with it reached this peer (IN_FLIGHT: still on its way). */
  pending: Map<number, number>;
  /** When the first of `pending`'s units expires, at the earliest (Infinity: none can; see prunePending). */
  expires: number;
}

/** The peers of one blob: by id, and as a list (a lookup samples it from a random place). */
interface BlobPeers {
  units: number;
  peers: Map<string, PeerEntry>;
  list: PeerEntry[];
  /** The peers whose `pending` is not empty: what pendingAtOthers looks through (not the whole swarm). */
  sending: Set<PeerEntry>;
}

/** Where a peer id was first seen: it stays bound there until it falls silent for the peer TTL. */
interface PeerBinding {
  address: string;
  /** The network host its announces come from (the gRPC peer), when the caller knows it. */
  source: string | undefined;
  lastSeen: number;
}

/** The time of a pending unit whose response is still on its way (it does not expire). */
const IN_FLIGHT = Infinity;

/** The units sent to a peer that it has not announced yet (empty buffer when none). */
function pendingBitmap(pending: Map<number, number>, held: Bitmap, units: number): Buffer {
  let b: Buffer | undefined;
  for (const u of pending.keys()) {
    if (u >= units || held.has(u)) continue;
    b ??= Buffer.alloc(Math.ceil(units / 8));
    b[u >>> 3]! |= 1 << (u & 7);
  }
  return b ?? Buffer.alloc(0);
}

/**
 * The tracker's memory (no database: a restarted seed learns everything again from the next announces).
 * Per blob, each peer's bitmap; per peer, the failures others reported.
 *
 * Peers are cluster members that may lie or flood, so every table is bounded (TrackerLimits) and every
 * field checked before it is used (tracker-limits.ts); a bad announce or lookup fails with
 * INVALID_ARGUMENT, one over a bound with NO_SPACE, and nothing is allocated for it. The unit count of a
 * blob is the seed's when the seed holds the blob (seedBits), else the first announce's (at most
 * maxUnits), until every peer of the blob is gone. A peer id is bound to the block server address it
 * first announced and to the network host it announced from; another address or host cannot use the id
 * until it has been silent for the peer TTL (a restarted node takes a new random id). Full tables keep
 * the peers they have (those expired are dropped first) and refuse new ones, so that a flood cannot push
 * out the peers that keep announcing.
 */
export class TrackerState {
  private readonly blobs = new Map<string, BlobPeers>();
  private readonly failures = new Map<string, { score: number; at: number }>();
  private readonly ids = new Map<string, PeerBinding>();
  private readonly limits: TrackerLimits;
  /** Bytes of all peer bitmaps held. */
  private bitmapBytes = 0;
  /** Peer entries held over all blobs. */
  private entries = 0;
  private lastSweep = 0;
  private readonly ttl: number;
  private readonly interval: number;
  private readonly halfLife: number;
  private readonly pendingTtl: number;
  private readonly pendingSilence: number;
  private readonly timers: Timers;
  private readonly random: () => number;
  /** Announces and lookups answered (metrics); carriedLookups: the lookups announces carried. */
  readonly counters = { announces: 0, lookups: 0, holdersReturned: 0, peersScanned: 0, carriedLookups: 0 };

  constructor(private readonly opts: TrackerStateOptions = {}) {
    this.ttl = opts.peerTtlMs ?? 30_000;
    this.interval = opts.announceIntervalMs ?? 5000;
    this.halfLife = opts.failureHalfLifeMs ?? 60_000;
    this.pendingTtl = opts.pendingTtlMs ?? 15_000;
    this.pendingSilence = Math.min(this.ttl, opts.pendingSilenceMs ?? 3 * 5 * this.interval);
    this.timers = opts.timers ?? realTimers;
    this.random = opts.random ?? Math.random;
    this.limits = { ...DEFAULT_TRACKER_LIMITS, ...opts.limits };
  }

  /** What the tracker holds (tests, status). */
  get size(): { blobs: number; peers: number; bitmapBytes: number; ids: number; failures: number } {
    let peers = 0;
    for (const b of this.blobs.values()) peers += b.peers.size;
    const { bitmapBytes } = this;
    return { blobs: this.blobs.size, peers, bitmapBytes, ids: this.ids.size, failures: this.failures.size };
  }

  /**
   * The seed is sending `units` of `blob` to `peer`: other peers are told (Holder.pending) so that they
   * fetch those units from that peer once it announces them, not from the seed a second time. Ignored for
   * a peer that has not announced itself for the blob.
   */
  assume(blob: string, peer: string, units: Iterable<number>): void {
    const b = this.blobs.get(blob);
    const p = b?.peers.get(peer);
    if (!b || !p) return;
    for (const u of units) if (u < p.bits.size && !p.bits.has(u)) p.pending.set(u, IN_FLIGHT);
    if (p.pending.size) b.sending.add(p);
  }

  /**
   * A seed handed `units` back to `peer` (it fetches them from the registry itself): pending at that peer
   * from now for the pending TTL. False, and nothing claimed, for a peer not announcing the blob.
   */
  handBack(blob: string, peer: string, units: readonly number[]): boolean {
    const p = this.blobs.get(blob)?.peers.get(peer);
    if (!p) return false;
    this.assume(blob, peer, units);
    const now = this.timers.now();
    for (const u of units) if (p.pending.get(u) === IN_FLIGHT) p.pending.set(u, now);
    p.expires = Math.min(p.expires, now + this.pendingTtl);
    return true;
  }

  /** A live peer (announcing, not reported failing) that holds every unit of first..last, if any. */
  holderOf(blob: string, first: number, last: number): { id: string; address: string } | undefined {
    const b = this.blobs.get(blob);
    if (!b) return undefined;
    const now = this.timers.now();
    for (const p of b.list) {
      if (now - p.lastSeen > this.pendingSilence || this.failureScore(p.id, now) >= 1) continue;
      let all = true;
      for (let u = first; u <= last && all; u++) all = p.bits.has(u);
      if (all) return { id: p.id, address: p.address };
    }
    return undefined;
  }

  /** Whether `peer` announced `unit` of `blob`. */
  holds(blob: string, peer: string, unit: number): boolean {
    return this.blobs.get(blob)?.peers.get(peer)?.bits.has(unit) === true;
  }

  /** Whether `unit` is pending at a live peer (on its way to it from the seed or the registry). */
  pendingAnywhere(blob: string, unit: number): boolean {
    return this.atOthers(blob, '', [unit], false);
  }

  /** The seed's response with units first..last reached `peer`: pending from now for the pending TTL. */
  delivered(blob: string, peer: string, first: number, last: number): void {
    const p = this.blobs.get(blob)?.peers.get(peer);
    if (!p) return;
    const now = this.timers.now();
    for (let u = first; u <= last; u++) if (p.pending.get(u) === IN_FLIGHT) p.pending.set(u, now);
    p.expires = Math.min(p.expires, now + this.pendingTtl);
  }

  /** Whether a peer other than `peer` (and not reported failing) is being sent one of `units`. */
  pendingAtOthers(blob: string, peer: string, units: readonly number[]): boolean {
    return this.atOthers(blob, peer, units, false);
  }

  /**
   * Whether a peer other than `peer` (not reported failing, announcing) holds one of `units` or is being
   * sent it: a raw file's piece can then come from that peer (Seed: a planned piece request is deferred).
   */
  elsewhere(blob: string, peer: string, units: readonly number[]): boolean {
    return this.atOthers(blob, peer, units, true);
  }

  /**
   * Units of `blob` on their way to live peers other than `peer`, at most `max` (in no order): what a seed
   * tells a node it defers, so that its next plan avoids them all, not only the run it asked for.
   */
  pendingAtOthersList(blob: string, peer: string, max: number): number[] {
    const out = new Set<number>();
    for (const p of this.others(blob, peer, false))
      for (const u of p.pending.keys()) if (out.size < max) out.add(u);
    return [...out];
  }

  /** Whether a live peer other than `peer` is being sent one of `units` (or, with `held`, holds it). */
  private atOthers(blob: string, peer: string, units: readonly number[], held: boolean): boolean {
    for (const p of this.others(blob, peer, held))
      for (const u of units) if (p.pending.has(u) || (held && p.bits.has(u))) return true;
    return false;
  }

  /**
   * The live peers of `blob` other than `peer` (with `held`, all; else those being sent units). A peer
   * reported failing or fallen silent is neither (prunePending drops what it was being sent).
   */
  private *others(blob: string, peer: string, held: boolean): Generator<PeerEntry> {
    const b = this.blobs.get(blob);
    if (!b) return;
    const now = this.timers.now();
    for (const p of held ? b.peers.values() : b.sending) {
      if (p.id === peer || (!held && !p.pending.size)) continue;
      const failures = this.failureScore(p.id, now);
      this.prunePending(b, p, now, failures);
      if (failures < 1 && now - p.lastSeen <= this.pendingSilence) yield p;
    }
  }

  /**
   * Drops what may never arrive: units sent longer than the pending TTL ago, and everything sent to a
   * peer others reported as failing or that fell silent.
   */
  private prunePending(b: BlobPeers, p: PeerEntry, now: number, failures: number): void {
    if (!p.pending.size) return;
    const gone = failures >= 1 || now - p.lastSeen > this.pendingSilence;
    // nothing has expired yet: no walk through every pending unit (this runs on each claim and deferral)
    if (!gone && now <= p.expires) return;
    let expires = Infinity;
    for (const [u, at] of p.pending)
      if (gone || now - at > this.pendingTtl) p.pending.delete(u);
      else if (at !== IN_FLIGHT) expires = Math.min(expires, at + this.pendingTtl);
    p.expires = expires;
    if (!p.pending.size) b.sending.delete(p);
  }

  /** The seed's response with units first..last did not reach `peer`: they are not on their way. */
  unassume(blob: string, peer: string, first: number, last: number): void {
    const b = this.blobs.get(blob);
    const p = b?.peers.get(peer);
    if (!b || !p) return;
    for (let u = first; u <= last; u++) p.pending.delete(u);
    if (!p.pending.size) b.sending.delete(p);
  }

  /**
   * A peer's announce; `source` is the network host it came from (the gRPC peer), when known. Throws
   * INVALID_ARGUMENT for a malformed announce, FORBIDDEN for a peer id bound elsewhere, NO_SPACE when a
   * new peer or blob does not fit.
   */
  announce(m: AnnounceMsg, source?: string): { need_full: boolean; interval_ms: number } {
    this.counters.announces++;
    const now = this.timers.now();
    const blob = checkBlob(m.blob);
    const id = checkPeerId(m.peer_id);
    const address = checkAddress(m.address);
    const zone = checkZone(m.zone);
    const seedBytes = this.opts.seedBits?.(blob)?.length;
    const units = checkUnits(m.units, this.limits.maxUnits, seedBytes);
    const bitmap = m.full ? checkBitmap(m.bitmap, units) : new Uint8Array(0);
    const added = unitList(m.added, units, units, 'added');
    if (now - this.lastSweep >= this.ttl / 2) this.sweep(now);
    this.bind(id, address, source, now);
    if (Array.isArray(m.failed_peers))
      for (const p of m.failed_peers.slice(0, this.limits.maxFailedPerAnnounce))
        if (isPeerId(p) && p !== id) this.reportFailure(p, now);
    const reply = { need_full: false, interval_ms: this.interval };
    let b = this.blobs.get(blob);
    if (m.leave) {
      if (b) this.dropPeer(blob, b, id);
      return reply;
    }
    if (b && b.units !== units) {
      // the seed's copy settles which count is right; without it, the first announce's stands
      if (!seedBytes || Math.ceil(b.units / 8) === seedBytes)
        throw DfError.invalidArgument(
          `tracker: ${blob} has ${b.units} units here, not ${units}; announce with the blob's unit count`,
        );
      for (const p of [...b.peers.keys()]) this.dropPeer(blob, b, p);
      b = undefined;
    }
    let p = b?.peers.get(id);
    if (!p && !m.full) return { ...reply, need_full: true };
    const bytes = Math.ceil(units / 8);
    if (!b) {
      if (this.blobs.size >= this.limits.maxBlobs) this.sweep(now);
      if (this.blobs.size >= this.limits.maxBlobs)
        throw full(`${this.limits.maxBlobs} blobs are tracked already`);
      b = { units, peers: new Map(), list: [], sending: new Set() };
      this.blobs.set(blob, b);
    }
    if (!p) {
      if (b.peers.size >= this.limits.maxPeersPerBlob) this.expire(blob, b, now);
      if (b.peers.size >= this.limits.maxPeersPerBlob)
        throw full(`${blob} has ${this.limits.maxPeersPerBlob} peers already`);
      if (this.entries >= this.limits.maxPeerEntries) this.sweep(now);
      if (this.entries >= this.limits.maxPeerEntries)
        throw full(`the tracker holds ${this.limits.maxPeerEntries} peer entries already`);
      if (this.bitmapBytes + bytes > this.limits.maxBitmapBytes) this.sweep(now);
      if (this.bitmapBytes + bytes > this.limits.maxBitmapBytes)
        throw full(`the bitmaps held reach the limit of ${this.limits.maxBitmapBytes} bytes`);
      p = {
        id,
        index: b.list.length,
        address,
        zone,
        load: 0,
        bits: new Bitmap(units),
        lastSeen: now,
        pending: new Map(),
        expires: Infinity,
      };
      b.peers.set(id, p);
      b.list.push(p);
      this.entries++;
      this.bitmapBytes += bytes;
    }
    p.address = address;
    p.zone = zone;
    p.load = loadOf(m.load);
    p.lastSeen = now;
    if (m.full) p.bits = Bitmap.fromBits(bitmap, units);
    for (const u of added) p.bits.set(u);
    return reply;
  }

  /**
   * Binds `id` to `address` and `source` (see the class comment). Refuses an id bound elsewhere that has
   * not fallen silent for the peer TTL.
   */
  private bind(id: string, address: string, source: string | undefined, now: number): void {
    const cur = this.ids.get(id);
    if (cur && now - cur.lastSeen <= this.ttl) {
      if (cur.address !== address || (cur.source && source && cur.source !== source))
        throw new DfError(
          'FORBIDDEN',
          `tracker: peer id ${id} belongs to ${cur.address}${cur.source ? ` (from ${cur.source})` : ''}; ` +
            'a node announces its own id (a restarted node takes a new one)',
        );
      cur.lastSeen = now;
      cur.source ??= source;
      return;
    }
    if (!cur && this.ids.size >= this.limits.maxPeerIds) this.sweep(now);
    if (!cur && this.ids.size >= this.limits.maxPeerIds)
      throw full(`${this.limits.maxPeerIds} peer ids are known already`);
    this.ids.delete(id);
    this.ids.set(id, { address, source, lastSeen: now });
  }

  private dropPeer(blob: string, b: BlobPeers, id: string): void {
    const p = b.peers.get(id);
    if (p && b.peers.delete(id)) {
      b.sending.delete(p);
      this.bitmapBytes -= Math.ceil(b.units / 8);
      this.entries--;
      const last = b.list.pop()!;
      if (last !== p) {
        b.list[p.index] = last;
        last.index = p.index;
      }
    }
    if (b.peers.size === 0 && this.blobs.get(blob) === b) this.blobs.delete(blob);
  }

  /** Forgets the peers of one blob that fell silent for the peer TTL. */
  private expire(blob: string, b: BlobPeers, now: number): void {
    for (const p of [...b.peers.values()]) if (now - p.lastSeen > this.ttl) this.dropPeer(blob, b, p.id);
  }

  /** Forgets every peer, id binding and failure that expired (at most every ttl/2, or when a table is full). */
  private sweep(now: number): void {
    this.lastSweep = now;
    for (const [blob, b] of [...this.blobs])
      for (const p of [...b.peers.values()]) if (now - p.lastSeen > this.ttl) this.dropPeer(blob, b, p.id);
    for (const [id, x] of [...this.ids]) if (now - x.lastSeen > this.ttl) this.ids.delete(id);
    for (const id of [...this.failures.keys()]) this.failureScore(id, now);
  }

  /**
   * Holders of `want` (at most maxHolders, and no more than maxAnswerBitmapBytes of bitmaps). Throws
   * INVALID_ARGUMENT for a malformed lookup.
   */
  lookup(m: LookupMsg): LookupAnswer {
    this.counters.lookups++;
    const blob = checkBlob(m.blob);
    const asker = m.peer_id ? checkPeerId(m.peer_id) : '';
    const zone = checkZone(m.zone);
    const b = this.blobs.get(blob);
    const wanted = unitList(m.want, b?.units ?? 0, this.limits.maxWant, 'want');
    const seedBits = this.opts.seedBits?.(blob);
    const seed_bitmap = seedBits ? Buffer.from(seedBits) : Buffer.alloc(0);
    if (!b) return { holders: [], units: 0, seed_bitmap, peers: 0 };
    const now = this.timers.now();
    // the units asked about, as a bitmap: a holder's share of them is a popcount of the intersection
    let want: Bitmap | undefined;
    const wantBits = checkBitmap(m.want_bitmap, b.units);
    if (wantBits.length) want = Bitmap.fromBits(wantBits, b.units);
    else if (Array.isArray(m.want) && m.want.length) {
      want = new Bitmap(b.units);
      for (const u of wanted) want.set(u);
    }
    const scored: { p: PeerEntry; wanted: number; failures: number }[] = [];
    const expired: string[] = [];
    const list = b.list;
    const start = list.length > this.limits.lookupCandidates ? Math.floor(this.random() * list.length) : 0;
    let candidates = 0;
    let k = 0;
    for (; k < list.length && candidates < this.limits.lookupCandidates; k++) {
      const p = list[(start + k) % list.length]!;
      if (now - p.lastSeen > this.ttl) {
        expired.push(p.id);
        continue;
      }
      if (p.id === asker) continue;
      const failures = this.failureScore(p.id, now);
      this.prunePending(b, p, now, failures);
      if (p.bits.present === 0 && p.pending.size === 0) continue;
      let wanted = p.bits.present + p.pending.size;
      if (want) {
        wanted = p.bits.countAndBitmap(want);
        for (const u of p.pending.keys()) if (want.has(u) && !p.bits.has(u)) wanted++;
      }
      if (wanted === 0) continue;
      scored.push({ p, wanted, failures });
      if (!zone || p.zone === zone) candidates++;
    }
    this.counters.peersScanned += k;
    for (const id of expired) this.dropPeer(blob, b, id);
    // peers besides the asker (those not scanned counted as live: the sweep drops the expired ones)
    const peers = b.peers.size - (b.peers.has(asker) ? 1 : 0);
    // near first, then reliable, then lightly loaded, then those holding more of what is wanted
    scored.sort(
      (a, c) =>
        Number(c.p.zone === zone && !!zone) - Number(a.p.zone === zone && !!zone) ||
        Math.floor(a.failures) - Math.floor(c.failures) ||
        a.p.load - c.p.load ||
        c.wanted - a.wanted ||
        this.random() - 0.5,
    );
    // each holder costs its bitmap and, at most, a pending bitmap of the same size
    const fit = Math.max(1, Math.floor(this.limits.maxAnswerBitmapBytes / (2 * Math.ceil(b.units / 8))));
    const asked = Number.isInteger(m.max_peers) && m.max_peers > 0 ? m.max_peers : 32;
    const holders = scored.slice(0, Math.min(asked, this.limits.maxHolders, fit)).map(({ p, failures }) => ({
      peer_id: p.id,
      address: p.address,
      zone: p.zone,
      load: p.load,
      bitmap: Buffer.from(p.bits.bits),
      failures: Math.floor(failures),
      pending: pendingBitmap(p.pending, p.bits, b.units),
    }));
    this.counters.holdersReturned += holders.length;
    return { holders, units: b.units, seed_bitmap, peers };
  }

  /** Peers known for a blob (status, tests). */
  peers(blob: string): string[] {
    return [...(this.blobs.get(blob)?.peers.keys() ?? [])];
  }

  /** The seed itself got a block from `peer` that failed verification: one failure report, as a node's. */
  reportBadData(peer: string): void {
    this.reportFailure(peer, this.timers.now());
  }

  private reportFailure(peer: string, now: number): void {
    const score = this.failureScore(peer, now) + 1;
    this.failures.delete(peer);
    // full: the report made longest ago goes (Map order is the order of the last reports)
    if (this.failures.size >= this.limits.maxFailureEntries) {
      const oldest = this.failures.keys().next();
      if (!oldest.done) this.failures.delete(oldest.value);
    }
    this.failures.set(peer, { score, at: now });
  }

  private failureScore(peer: string, now: number): number {
    const f = this.failures.get(peer);
    if (!f) return 0;
    const s = f.score * 0.5 ** ((now - f.at) / this.halfLife);
    if (s < 0.05) this.failures.delete(peer);
    return s;
  }
}
