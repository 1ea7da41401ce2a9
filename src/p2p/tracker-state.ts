import { Bitmap } from '../cache/bitmap.js';
import { realTimers, type Timers } from '../util/timers.js';

export interface AnnounceMsg {
  blob: string;
  units: number;
  peer_id: string;
  address: string;
  zone: string;
  load: number;
  full: boolean;
  bitmap: Uint8Array;
  added: number[];
  leave: boolean;
  failed_peers: string[];
}

export interface LookupMsg {
  blob: string;
  peer_id: string;
  zone: string;
  want: number[];
  max_peers: number;
}

export interface HolderMsg {
  peer_id: string;
  address: string;
  zone: string;
  load: number;
  bitmap: Buffer;
  failures: number;
  /** Units the seed is sending the holder (see Holder.pending in tracker.proto); empty when none. */
  pending: Buffer;
}

export interface LookupAnswer {
  holders: HolderMsg[];
  units: number;
  /** Units the seed holds (empty: it does not serve the blob, or holds nothing yet). */
  seed_bitmap: Buffer;
  /** Peers of the swarm besides the asker. */
  peers: number;
}

interface PeerEntry {
  id: string;
  address: string;
  zone: string;
  load: number;
  bits: Bitmap;
  lastSeen: number;
  /** Unit → when the seed started sending it to this peer. */
  pending: Map<number, number>;
}

export interface TrackerStateOptions {
  /** A peer that has not announced for this long is forgotten (ms). Default 30 s. */
  peerTtlMs?: number;
  /** Interval peers are told to announce at (ms). Default 5 s. */
  announceIntervalMs?: number;
  /** Reported failures halve every this many ms. Default 60 s. */
  failureHalfLifeMs?: number;
  /**
   * A unit the seed sent a peer counts as that peer's to share for this long (ms; default 15 s): other
   * peers are told it is on its way (until announced), and the seed defers their planned requests for it.
   */
  pendingTtlMs?: number;
  /**
   * ...and only while that peer keeps announcing: silent this long (ms), it is taken for dead (killed after
   * the seed's response left, before it announced the units). Default three of the heartbeats nodes send
   * every fifth announce interval (at most peerTtlMs).
   */
  pendingSilenceMs?: number;
  /** The seed's own bitmap of a blob (a seed runs the tracker of the blobs it serves). */
  seedBits?: (blob: string) => Uint8Array | undefined;
  timers?: Timers;
}

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
 */
export class TrackerState {
  private readonly blobs = new Map<string, { units: number; peers: Map<string, PeerEntry> }>();
  private readonly failures = new Map<string, { score: number; at: number }>();
  private readonly ttl: number;
  private readonly interval: number;
  private readonly halfLife: number;
  private readonly pendingTtl: number;
  private readonly pendingSilence: number;
  private readonly timers: Timers;
  /** Announces and lookups answered (metrics). */
  readonly counters = { announces: 0, lookups: 0, holdersReturned: 0 };

  constructor(private readonly opts: TrackerStateOptions = {}) {
    this.ttl = opts.peerTtlMs ?? 30_000;
    this.interval = opts.announceIntervalMs ?? 5000;
    this.halfLife = opts.failureHalfLifeMs ?? 60_000;
    this.pendingTtl = opts.pendingTtlMs ?? 15_000;
    this.pendingSilence = Math.min(this.ttl, opts.pendingSilenceMs ?? 3 * 5 * this.interval);
    this.timers = opts.timers ?? realTimers;
  }

  /**
   * The seed is sending `units` of `blob` to `peer`: other peers are told (Holder.pending) so that they
   * fetch those units from that peer once it announces them, not from the seed a second time. Ignored for
   * a peer that has not announced itself for the blob.
   */
  assume(blob: string, peer: string, units: Iterable<number>): void {
    const p = this.blobs.get(blob)?.peers.get(peer);
    if (!p) return;
    const now = this.timers.now();
    for (const u of units) if (u < p.bits.size && !p.bits.has(u)) p.pending.set(u, now);
  }

  /** Whether a peer other than `peer` (and not reported failing) is being sent one of `units`. */
  pendingAtOthers(blob: string, peer: string, units: readonly number[]): boolean {
    const b = this.blobs.get(blob);
    if (!b) return false;
    const now = this.timers.now();
    for (const p of b.peers.values()) {
      if (p.id === peer || !p.pending.size) continue;
      this.prunePending(p, now, this.failureScore(p.id, now));
      for (const u of units) if (p.pending.has(u)) return true;
    }
    return false;
  }

  /**
   * Drops what may never arrive: units sent longer than the pending TTL ago, and everything sent to a
   * peer others reported as failing or that fell silent.
   */
  private prunePending(p: PeerEntry, now: number, failures: number): void {
    if (!p.pending.size) return;
    const gone = failures >= 1 || now - p.lastSeen > this.pendingSilence;
    for (const [u, at] of p.pending) if (gone || now - at > this.pendingTtl) p.pending.delete(u);
  }

  /** The seed's response with units first..last did not reach `peer`: they are not on their way. */
  unassume(blob: string, peer: string, first: number, last: number): void {
    const p = this.blobs.get(blob)?.peers.get(peer);
    if (p) for (let u = first; u <= last; u++) p.pending.delete(u);
  }

  announce(m: AnnounceMsg): { need_full: boolean; interval_ms: number } {
    this.counters.announces++;
    const now = this.timers.now();
    for (const p of m.failed_peers) this.reportFailure(p, now);
    const reply = { need_full: false, interval_ms: this.interval };
    if (!m.blob || !m.peer_id || !(m.units > 0)) return reply;
    let b = this.blobs.get(m.blob);
    if (m.leave) {
      b?.peers.delete(m.peer_id);
      if (b && b.peers.size === 0) this.blobs.delete(m.blob);
      return reply;
    }
    if (!b || b.units !== m.units) {
      // a different unit count means someone announced garbage: the latest full announce wins
      if (b && !m.full) return { ...reply, need_full: true };
      b = { units: m.units, peers: new Map() };
      this.blobs.set(m.blob, b);
    }
    let p = b.peers.get(m.peer_id);
    if (!p && !m.full) return { ...reply, need_full: true };
    if (!p) {
      p = {
        id: m.peer_id,
        address: m.address,
        zone: m.zone,
        load: m.load,
        bits: new Bitmap(m.units),
        lastSeen: now,
        pending: new Map(),
      };
      b.peers.set(m.peer_id, p);
    }
    p.address = m.address;
    p.zone = m.zone;
    p.load = m.load;
    p.lastSeen = now;
    if (m.full) p.bits = Bitmap.fromBits(m.bitmap, m.units);
    for (const u of m.added) if (u < m.units) p.bits.set(u);
    return reply;
  }

  lookup(m: LookupMsg): LookupAnswer {
    this.counters.lookups++;
    const seedBits = this.opts.seedBits?.(m.blob);
    const seed_bitmap = seedBits ? Buffer.from(seedBits) : Buffer.alloc(0);
    const b = this.blobs.get(m.blob);
    if (!b) return { holders: [], units: 0, seed_bitmap, peers: 0 };
    const now = this.timers.now();
    // the units asked about, as a bitmap: a holder's share of them is a popcount of the intersection
    let want: Bitmap | undefined;
    if (m.want.length) {
      want = new Bitmap(b.units);
      for (const u of m.want) if (u >= 0 && u < b.units) want.set(u);
    }
    const scored: { p: PeerEntry; wanted: number; failures: number }[] = [];
    let peers = 0;
    for (const p of [...b.peers.values()]) {
      if (now - p.lastSeen > this.ttl) {
        b.peers.delete(p.id);
        continue;
      }
      if (p.id === m.peer_id) continue;
      peers++;
      const failures = this.failureScore(p.id, now);
      this.prunePending(p, now, failures);
      if (p.bits.present === 0 && p.pending.size === 0) continue;
      let wanted = p.bits.present + p.pending.size;
      if (want) {
        wanted = p.bits.countAnd(want.bits);
        for (const u of p.pending.keys()) if (want.has(u) && !p.bits.has(u)) wanted++;
      }
      if (wanted === 0) continue;
      scored.push({ p, wanted, failures });
    }
    // near first, then reliable, then lightly loaded, then those holding more of what is wanted
    scored.sort(
      (a, c) =>
        Number(c.p.zone === m.zone && !!m.zone) - Number(a.p.zone === m.zone && !!m.zone) ||
        Math.floor(a.failures) - Math.floor(c.failures) ||
        a.p.load - c.p.load ||
        c.wanted - a.wanted ||
        Math.random() - 0.5,
    );
    const holders = scored.slice(0, m.max_peers > 0 ? m.max_peers : 32).map(({ p, failures }) => ({
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

  private reportFailure(peer: string, now: number): void {
    const score = this.failureScore(peer, now) + 1;
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
