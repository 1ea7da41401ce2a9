/**
 * A swarm larger than a lookup scans: the tracker scores at most `lookupCandidates` holders from a random
 * place in the swarm, so lookups of a 5,000-peer swarm spread over all of it, never name a peer that left
 * or expired, still prefer the asker's zone, and count the swarm. The (peer, blob) entries of all blobs
 * are bounded.
 */
import { describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { DEFAULT_TRACKER_LIMITS } from '../../src/p2p/tracker-limits.js';
import { TrackerState, type AnnounceMsg } from '../../src/p2p/tracker-state.js';
import type { Timers } from '../../src/util/timers.js';

function clock(): Timers & { t: number } {
  const c = { t: 1000, now: () => c.t, setTimeout: () => 0, clearTimeout: () => undefined };
  return c;
}
const digest = (i: number) => 'sha256:' + i.toString(16).padStart(64, '0');
const BLOB = digest(1);
const UNITS = 64;

const announce = (i: number, m: Partial<AnnounceMsg> = {}): AnnounceMsg => {
  const bitmap = new Uint8Array(UNITS / 8);
  bitmap[i % bitmap.length] = 1 << (i % 8); // each peer holds one unit
  return {
    blob: BLOB,
    units: UNITS,
    peer_id: `p${i}`,
    address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}:7700`,
    zone: '',
    load: 0,
    full: true,
    bitmap,
    added: [],
    leave: false,
    failed_peers: [],
    ...m,
  };
};
const lookup = (t: TrackerState, zone = '') =>
  t.lookup({ blob: BLOB, peer_id: 'asker', zone, want: [], max_peers: 64 });

describe('tracker lookups in a large swarm', () => {
  const SWARM = 5000;

  it('spread over the whole swarm and count it', () => {
    const t = new TrackerState({ timers: clock() });
    for (let i = 0; i < SWARM; i++) t.announce(announce(i));
    const seen = new Set<string>();
    for (let k = 0; k < 2000; k++) {
      const a = lookup(t);
      expect(a.peers).toBe(SWARM);
      expect(a.holders).toHaveLength(64);
      for (const h of a.holders) seen.add(h.peer_id);
    }
    // each answer names the holders scored in a window from a random place, so a peer is named with probability
    // 64/5000 per lookup and missed by all 2,000 with (1 - 64/5000)^2000 ≈ 6e-12: every peer must appear
    expect(seen.size).toBe(SWARM);
    // ...while each lookup scored a window, not the swarm (every peer here holds a wanted unit)
    expect(t.counters.peersScanned).toBe(2000 * DEFAULT_TRACKER_LIMITS.lookupCandidates);
  });

  it('never names a peer that left or expired (the list stays consistent as peers go)', () => {
    const c = clock();
    const t = new TrackerState({ timers: c, peerTtlMs: 1000 });
    for (let i = 0; i < SWARM; i++) t.announce(announce(i));
    const gone = new Set<string>();
    for (let i = 0; i < SWARM; i += 3) {
      t.announce(announce(i, { leave: true }));
      gone.add(`p${i}`);
    }
    c.t += 600;
    // half of the rest announce again; the others expire
    for (let i = 1; i < SWARM; i += 3) t.announce(announce(i, { full: false }));
    c.t += 600;
    const seen = new Set<string>();
    // named with probability 64/1667 per lookup: missed by all 1,000 with ≈ 1e-17
    for (let k = 0; k < 1000; k++)
      for (const h of lookup(t).holders) {
        expect(gone.has(h.peer_id)).toBe(false);
        expect(Number(h.peer_id.slice(1)) % 3).toBe(1);
        seen.add(h.peer_id);
      }
    const alive = Math.ceil((SWARM - 1) / 3);
    expect(seen.size).toBe(alive);
    expect(t.size.peers).toBe(alive);
    expect(lookup(t).peers).toBe(alive);
  });

  it("prefers the asker's zone beyond the first window", () => {
    const t = new TrackerState({ timers: clock() });
    for (let i = 0; i < SWARM; i++) t.announce(announce(i, { zone: i % 100 === 7 ? 'rack-7' : '' }));
    for (let k = 0; k < 20; k++) {
      const a = lookup(t, 'rack-7');
      // all 50 peers of the zone, first, wherever they are in the swarm
      expect(a.holders).toHaveLength(64);
      expect(a.holders.slice(0, 50).every((h) => h.zone === 'rack-7')).toBe(true);
    }
  });

  it('bounds the (peer, blob) entries over all blobs', () => {
    const c = clock();
    const t = new TrackerState({ timers: c, peerTtlMs: 1000, limits: { maxPeerEntries: 10 } });
    for (let b = 0; b < 5; b++) for (let i = 0; i < 2; i++) t.announce(announce(i, { blob: digest(b + 1) }));
    let err: unknown;
    try {
      t.announce(announce(0, { blob: digest(9) }));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(DfError);
    expect((err as DfError).code).toBe('NO_SPACE');
    expect(t.size.peers).toBe(10);
    t.announce(announce(0, { blob: digest(1), leave: true }));
    t.announce(announce(0, { blob: digest(9) }));
    expect(t.size.peers).toBe(10);
    c.t += 2000;
    t.announce(announce(1, { blob: digest(10) }));
    expect(t.size.peers).toBe(1);
  });
});
