import { describe, expect, it } from 'vitest';
import { rankSeeds, trackerAddress } from '../../src/p2p/rendezvous.js';
import { tokenMatches } from '../../src/p2p/auth.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { TrackerState } from '../../src/p2p/tracker-state.js';
import type { Timers } from '../../src/util/timers.js';

function clock(): Timers & { t: number } {
  const c = { t: 1000, now: () => c.t, setTimeout: () => 0, clearTimeout: () => undefined };
  return c;
}

const digest = (i: number) => 'sha256:' + i.toString(16).padStart(64, '0');

describe('rendezvous hashing', () => {
  const seeds = ['10.0.0.1:7700', '10.0.0.2:7700', '10.0.0.3:7700', '10.0.0.4:7700'];
  it('ranks every seed, the same way whatever the list order', () => {
    const r = rankSeeds(digest(1), seeds);
    expect([...r].sort()).toEqual([...seeds].sort());
    expect(rankSeeds(digest(1), [...seeds].reverse())).toEqual(r);
  });
  it('spreads blobs over seeds and moves only the blobs of a removed seed, each to its next seed', () => {
    const count = new Map<string, number>();
    for (let i = 0; i < 2000; i++) {
      const r = rankSeeds(digest(i), seeds);
      count.set(r[0]!, (count.get(r[0]!) ?? 0) + 1);
      const without = rankSeeds(
        digest(i),
        seeds.filter((s) => s !== seeds[0]),
      );
      expect(without[0]).toBe(r[0] === seeds[0] ? r[1] : r[0]);
    }
    for (const s of seeds) expect(count.get(s)!).toBeGreaterThan(350);
  });
  it('puts the tracker on the next port', () => {
    expect(trackerAddress('seed-0.seeds:7700')).toBe('seed-0.seeds:7701');
  });
});

describe('cluster token', () => {
  it('matches only the exact token; an empty token matches nothing', () => {
    expect(tokenMatches('s3cret', 's3cret')).toBe(true);
    expect(tokenMatches('s3cret', 's3cret ')).toBe(false);
    expect(tokenMatches('s3cret', undefined)).toBe(false);
    expect(tokenMatches('s3cret', ['s3cret'])).toBe(false);
    expect(tokenMatches('', '')).toBe(false);
  });

  it('keeps the expected digest for the next call, and not for another token (two clusters in one process)', () => {
    for (let i = 0; i < 3; i++) {
      expect(tokenMatches('first', 'first')).toBe(true);
      expect(tokenMatches('second', 'first')).toBe(false);
      expect(tokenMatches('second', 'second')).toBe(true);
      expect(tokenMatches('first', 'second')).toBe(false);
    }
  });
});

describe('isolation', () => {
  it('excludes a failing peer for a growing period, capped, and forgives after successes', () => {
    const c = clock();
    const events: number[] = [];
    const iso = new Isolation({ baseMs: 100, maxMs: 350, timers: c, onIsolate: (_p, ms) => events.push(ms) });
    expect(iso.isolated('a')).toBe(false);
    iso.fail('a', 'TIMEOUT');
    expect(iso.isolated('a')).toBe(true);
    c.t += 100;
    expect(iso.isolated('a')).toBe(false);
    iso.fail('a', 'bad block');
    iso.fail('a', 'bad block');
    iso.fail('a', 'bad block');
    expect(events).toEqual([100, 200, 350, 350]);
    c.t += 350;
    iso.ok('a');
    expect(iso.strikes('a')).toBe(3);
    expect(iso.isolated('b')).toBe(false);
  });
});

describe('tracker state', () => {
  const base = {
    zone: '',
    load: 0,
    added: [],
    leave: false,
    failed_peers: [],
    bitmap: new Uint8Array(0),
    full: false,
  };
  it('takes full bitmaps and deltas, asks for a full announce from unknown peers, forgets leavers', () => {
    const t = new TrackerState({ timers: clock() });
    const b = digest(7);
    expect(
      t.announce({ ...base, blob: b, units: 20, peer_id: 'p1', address: 'a:1', added: [1] }).need_full,
    ).toBe(true);
    t.announce({
      ...base,
      blob: b,
      units: 20,
      peer_id: 'p1',
      address: 'a:1',
      full: true,
      bitmap: Uint8Array.from([0b101, 0, 0]),
    });
    t.announce({ ...base, blob: b, units: 20, peer_id: 'p1', address: 'a:1', added: [9] });
    const r = t.lookup({ blob: b, peer_id: 'me', zone: '', want: [9], max_peers: 8 });
    expect(r.units).toBe(20);
    expect(r.holders.map((h) => h.peer_id)).toEqual(['p1']);
    expect([...r.holders[0]!.bitmap]).toEqual([0b101, 0b10, 0]);
    expect(t.lookup({ blob: b, peer_id: 'me', zone: '', want: [3], max_peers: 8 }).holders).toEqual([]);
    expect(t.lookup({ blob: b, peer_id: 'p1', zone: '', want: [], max_peers: 8 }).holders).toEqual([]);
    t.announce({ ...base, blob: b, units: 20, peer_id: 'p1', address: 'a:1', leave: true });
    expect(t.peers(b)).toEqual([]);
  });
  it('prefers the same zone, then reliable, then lightly loaded holders; expires silent peers', () => {
    const c = clock();
    const t = new TrackerState({ timers: c, peerTtlMs: 1000 });
    const b = digest(8);
    const ann = (id: string, zone: string, load: number) =>
      t.announce({
        ...base,
        blob: b,
        units: 8,
        peer_id: id,
        address: `${id}:1`,
        zone,
        load,
        full: true,
        bitmap: Uint8Array.from([0xff]),
      });
    ann('far', 'z2', 0);
    ann('busy', 'z1', 5);
    ann('idle', 'z1', 1);
    ann('flaky', 'z1', 0);
    t.announce({
      ...base,
      blob: b,
      units: 8,
      peer_id: 'idle',
      address: 'idle:1',
      zone: 'z1',
      load: 1,
      failed_peers: ['flaky'],
    });
    const order = t
      .lookup({ blob: b, peer_id: 'me', zone: 'z1', want: [0], max_peers: 8 })
      .holders.map((h) => h.peer_id);
    expect(order).toEqual(['idle', 'busy', 'flaky', 'far']);
    c.t += 1500;
    ann('idle', 'z1', 1);
    expect(
      t.lookup({ blob: b, peer_id: 'me', zone: 'z1', want: [], max_peers: 8 }).holders.map((h) => h.peer_id),
    ).toEqual(['idle']);
  });
  it('forgets what the seed was sending a peer that stopped announcing (killed), before the pending TTL', () => {
    const c = clock();
    // heartbeats every 5 x 200 ms: silent for three of them (3 s), a peer is taken for dead
    const t = new TrackerState({ timers: c, announceIntervalMs: 200, pendingTtlMs: 30_000 });
    const b = digest(9);
    const ann = (id: string) =>
      t.announce({
        ...base,
        blob: b,
        units: 8,
        peer_id: id,
        address: `${id}:1`,
        full: true,
        bitmap: new Uint8Array(1),
      });
    ann('dead');
    ann('live');
    t.assume(b, 'dead', [0, 1]);
    t.assume(b, 'live', [2]);
    const pending = () =>
      Object.fromEntries(
        t
          .lookup({ blob: b, peer_id: 'me', zone: '', want: [], max_peers: 8 })
          .holders.map((h) => [h.peer_id, [...h.pending]]),
      );
    expect(pending()).toEqual({ dead: [0b11], live: [0b100] });
    expect(t.pendingAtOthers(b, 'me', [0])).toBe(true);
    // 'live' keeps sending heartbeats, 'dead' does not
    for (let i = 0; i < 4; i++) {
      c.t += 1000;
      ann('live');
    }
    expect(t.pendingAtOthers(b, 'me', [0])).toBe(false);
    expect(t.pendingAtOthers(b, 'me', [2])).toBe(true);
    expect(pending()).toEqual({ live: [0b100] });
  });
  it('knows a raw file piece is elsewhere while another live node holds it or is sent it (not the asker, not a silent one)', () => {
    const c = clock();
    const t = new TrackerState({ timers: c, announceIntervalMs: 200, pendingTtlMs: 30_000 });
    const b = digest(10);
    const ann = (id: string, bits: number) =>
      t.announce({
        ...base,
        blob: b,
        units: 8,
        peer_id: id,
        address: `${id}:1`,
        full: true,
        bitmap: Uint8Array.of(bits),
      });
    ann('holder', 0b1);
    ann('me', 0b10);
    t.assume(b, 'holder', [2]);
    expect(t.elsewhere(b, 'me', [0])).toBe(true);
    expect(t.elsewhere(b, 'me', [2])).toBe(true);
    expect(t.elsewhere(b, 'me', [1])).toBe(false);
    expect(t.elsewhere(b, 'holder', [0])).toBe(false);
    expect(t.pendingAtOthers(b, 'me', [0])).toBe(false);
    // 'holder' falls silent: its pieces are no longer counted on
    for (let i = 0; i < 4; i++) {
      c.t += 1000;
      ann('me', 0b10);
    }
    expect(t.elsewhere(b, 'me', [0])).toBe(false);
  });
});
