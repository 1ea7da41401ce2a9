import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { planRun, type PlannedRun, type PlanOptions } from '../../src/p2p/fill-planner.js';
import type { PeerView } from '../../src/p2p/peer-view.js';
import { viewOf as view } from '../helpers/peer-view.js';
import { TrackerState, type HolderMsg } from '../../src/p2p/tracker-state.js';
import { manualTimers } from '../helpers/manual-timers.js';

const KIB = 1024;

/** A blob of `blocks` blocks of 64 KiB (plus a 1 KiB TOC unit) and a cache holding `present`. */
const viewOf = (blocks: number, present: number[] = []): PeerView => view(blocks, new Set(present));

function bits(units: number, set: Iterable<number>): Buffer {
  const b = Buffer.alloc(Math.ceil(units / 8));
  for (const u of set) b[u >>> 3] = b[u >>> 3]! | (1 << (u & 7));
  return b;
}

function holder(id: string, units: number, has: Iterable<number>, pending: Iterable<number> = []): HolderMsg {
  return {
    peer_id: id,
    address: id + ':7700',
    zone: '',
    load: 0,
    failures: 0,
    bitmap: bits(units, has),
    pending: bits(units, pending),
  };
}

const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

const opts = (o: Partial<PlanOptions> = {}): PlanOptions => ({
  claimed: new Set(),
  maxRunBytes: 4 * 1024 * KIB,
  seedRunBytes: 1024 * KIB,
  seed: true,
  ...o,
});

describe('P2P fill planner', () => {
  it('asks the seed for whole pieces it holds that no peer has, in runs of seedRunBytes, spread at random', () => {
    const v = viewOf(256);
    // the seed holds units 16..239 (pieces of 16 units = 1 MiB); a peer holds 0..15
    v.setHolders({
      holders: [holder('p1', 257, range(0, 16))],
      units: 257,
      seed_bitmap: bits(257, range(16, 240)),
    });
    const starts = new Set<number>();
    for (let i = 0; i < 50; i++) {
      const r = planRun(v, opts({ seedRunBytes: 512 * KIB }));
      expect(r).not.toBe('wait');
      const run = r as { units: number[]; from: string };
      expect(run.from).toBe('seed');
      // a piece's first unit; served from the seed's cache: never into units it lacks; at most 512 KiB
      expect(run.units[0]! % 16).toBe(0);
      expect(run.units[0]).toBeGreaterThanOrEqual(16);
      expect(run.units[run.units.length - 1]).toBeLessThan(240);
      expect(run.units.length).toBe(8);
      starts.add(run.units[0]!);
    }
    expect(starts.size).toBeGreaterThan(5);
  });

  it('without a free seed slot takes the rarest unit peers hold, extended over a common holder', () => {
    const v = viewOf(32);
    v.setHolders({
      holders: [holder('a', 33, range(0, 32)), holder('b', 33, range(0, 8))],
      units: 33,
      seed_bitmap: bits(33, range(0, 33)),
    });
    const r = planRun(v, opts({ seed: false, rand: () => 0.99 })) as { units: number[]; from: string };
    expect(r.from).toBe('peer');
    // units 8.. are rarer (one holder) than 0..7 (two): the run starts there and stays within a's units
    expect(r.units[0]).toBeGreaterThanOrEqual(8);
    expect(r.units.every((u, i) => i === 0 || u === r.units[i - 1]! + 1)).toBe(true);
  });

  it('does not ask the seed again for units it is sending another peer; waits for them instead', () => {
    const v = viewOf(8);
    v.setHolders({
      holders: [holder('p1', 9, [], range(0, 9))],
      units: 9,
      seed_bitmap: bits(9, range(0, 9)),
    });
    expect(planRun(v, opts())).toBe('wait');
    // once announced by p1, they come from p1 (with the seed slot taken; see the next test)
    v.setHolders({ holders: [holder('p1', 9, range(0, 9))], units: 9, seed_bitmap: bits(9, range(0, 9)) });
    expect((planRun(v, opts({ seed: false })) as { from: string }).from).toBe('peer');
  });

  it('with nothing left for the seed to carry into the swarm, one run comes from what the seed holds, rarest first', () => {
    const v = viewOf(64);
    // every unit is held by a peer: 'a' has all, 'b' all but 40..47 (the rarest); the seed holds 32..64
    const swarm = (seed: Iterable<number>, bUnits = [...range(0, 40), ...range(48, 65)]) =>
      v.setHolders({
        holders: [holder('a', 65, range(0, 65)), holder('b', 65, bUnits)],
        units: 65,
        seed_bitmap: bits(65, seed),
      });
    swarm(range(32, 65));
    for (const r of [0, 0.5, 0.99]) {
      const run = planRun(v, opts({ seedRunBytes: 256 * KIB, rand: () => r })) as PlannedRun;
      // the seed's upload would idle otherwise: the rarest units it holds, within seedRunBytes
      expect(run).toEqual({ units: range(40, 44), from: 'seed' });
    }
    // claimed or on their way elsewhere: the next ones the seed holds
    const next = planRun(v, opts({ seedRunBytes: 256 * KIB, claimed: new Set(range(40, 48)) })) as PlannedRun;
    expect(next.from).toBe('seed');
    expect(next.units[0]).toBeGreaterThanOrEqual(32);
    expect(next.units.every((u) => u >= 32 && (u < 40 || u >= 48))).toBe(true);
    // without a free seed slot: from peers
    expect((planRun(v, opts({ seed: false })) as PlannedRun).from).toBe('peer');
    // the seed holds nothing this node misses: from peers
    swarm([]);
    expect((planRun(v, opts()) as PlannedRun).from).toBe('peer');
    // a unit nobody holds yet (the seed's to carry) comes first, and only such units go to the seed
    swarm(range(0, 65), range(0, 65));
    v.setHolders({
      holders: [holder('a', 65, range(1, 65)), holder('b', 65, range(1, 65))],
      units: 65,
      seed_bitmap: bits(65, range(0, 65)),
    });
    expect(planRun(v, opts({ rand: () => 0 }))).toEqual({ units: [0], from: 'seed' });
    // all equally rare: a random piece (1 MiB = 16 units) from its first unit, so that nodes differ
    v.setHolders({
      holders: [holder('a', 65, range(0, 65)), holder('b', 65, range(0, 65))],
      units: 65,
      seed_bitmap: bits(65, range(0, 65)),
    });
    const starts = new Set<number>();
    for (let k = 0; k < 20; k++) {
      const run = planRun(v, opts({ seedRunBytes: 256 * KIB, rand: () => k / 20 })) as PlannedRun;
      expect(run.from).toBe('seed');
      expect(run.units[0]! % 16).toBe(0);
      starts.add(run.units[0]!);
    }
    expect(starts.size).toBeGreaterThan(2);
  });

  it('alone, asks the seed in blob order from the first missing unit, across what the seed holds and what it does not', () => {
    const v = viewOf(64, [0, 1]);
    // the seed holds 0..9 (its in-order fill), no peer: units 2..17 (1 MiB) are the next run, whatever the
    // random draw, although 2..9 are held and 10..17 not; then 18.. once 2..17 are claimed
    v.setHolders({ holders: [], units: 65, peers: 0, seed_bitmap: bits(65, range(0, 10)) });
    for (const r of [0, 0.5, 0.99]) {
      const run = planRun(v, opts({ alone: true, rand: () => r })) as { units: number[]; from: string };
      expect(run).toEqual({ units: range(2, 18), from: 'seed' });
    }
    const next = planRun(v, opts({ alone: true, claimed: new Set(range(2, 18)) })) as { units: number[] };
    expect(next.units).toEqual(range(18, 34));
    // not alone (the same view, as the planner sees a swarm): what the seed holds, cut where its holdings end
    const swarm = planRun(v, opts({ rand: () => 0.99 })) as { units: number[] };
    expect(swarm.units).toEqual(range(2, 10));
  });

  it('treats units only unusable (isolated) holders have as the seed’s, and stops when all is claimed', () => {
    const v = viewOf(4);
    v.setHolders({ holders: [holder('bad', 5, range(0, 5))], units: 5 });
    const r = planRun(v, opts({ usable: (h) => h.id !== 'bad' })) as { units: number[]; from: string };
    expect(r.from).toBe('seed');
    expect(planRun(v, opts({ usable: (h) => h.id !== 'bad', seed: false }))).toBe('wait');
    expect(planRun(v, opts({ claimed: new Set(range(0, 5)) }))).toBeUndefined();
    expect(planRun(viewOf(4, range(0, 5)), opts())).toBeUndefined();
  });

  it('leaves units that only a busy holder has to that holder: the seed is not asked for them again', () => {
    const v = viewOf(32);
    // 'busy' holds units 0..15; nobody holds 16..32
    v.setHolders({ holders: [holder('busy', 33, range(0, 16))], units: 33 });
    const usable = (h: { id: string }) => h.id !== 'busy';
    const soon = () => true;
    for (let k = 0; k < 50; k++) {
      const r = planRun(v, opts({ usable, soon, rand: () => k / 50 })) as { units: number[]; from: string };
      expect(r.from).toBe('seed');
      expect(Math.min(...r.units)).toBeGreaterThanOrEqual(16);
    }
    // with 16..32 claimed (on their way), what is left is the busy holder's: wait for it
    expect(planRun(v, opts({ usable, soon, claimed: new Set(range(16, 33)) }))).toBe('wait');
    // isolated (not even soon): the seed has them to give
    const r = planRun(v, opts({ usable, soon: usable, claimed: new Set(range(16, 33)) })) as { from: string };
    expect(r.from).toBe('seed');
    // and once it is free again, the run comes from it
    const p = planRun(v, opts({ soon, claimed: new Set(range(16, 33)) })) as {
      units: number[];
      from: string;
    };
    expect(p.from).toBe('peer');
  });
});

describe('tracker: units on their way from the seed', () => {
  const c = manualTimers(1000);
  const base = { zone: '', load: 0, leave: false, failed_peers: [], bitmap: new Uint8Array(0), added: [] };
  const blob = 'sha256:' + '2'.repeat(64);

  it('marks units the seed sends as pending at the receiver until announced, expired after delivery or its peer fails', () => {
    const seedHas = bits(10, [0, 1, 2]);
    const t = new TrackerState({
      timers: c.timers,
      pendingTtlMs: 5000,
      seedBits: (d) => (d === blob ? seedHas : undefined),
    });
    for (const id of ['a', 'b', 'c'])
      t.announce({
        ...base,
        blob,
        units: 10,
        peer_id: id,
        address: `${id}:1`,
        full: true,
        bitmap: new Uint8Array(2),
      });
    t.assume(blob, 'a', [0, 1]);
    t.assume(blob, 'b', [2]);
    t.assume(blob, 'stranger', [3]);
    let r = t.lookup({ blob, peer_id: 'c', zone: '', want: [], max_peers: 8 });
    expect(r.peers).toBe(2);
    expect([...r.seed_bitmap]).toEqual([...seedHas]);
    const pend = (id: string) => [...(r.holders.find((h) => h.peer_id === id)?.pending ?? [])];
    expect(pend('a')).toEqual([0b11, 0]);
    expect(pend('b')).toEqual([0b100, 0]);
    // a announces unit 0: it is held, 1 still pending
    t.announce({ ...base, blob, units: 10, peer_id: 'a', address: 'a:1', full: false, added: [0] });
    r = t.lookup({ blob, peer_id: 'c', zone: '', want: [], max_peers: 8 });
    expect(pend('a')).toEqual([0b10, 0]);
    // b is reported as failing: its pending units may never arrive
    t.announce({ ...base, blob, units: 10, peer_id: 'c', address: 'c:1', full: false, failed_peers: ['b'] });
    r = t.lookup({ blob, peer_id: 'c', zone: '', want: [], max_peers: 8 });
    expect(r.holders.find((h) => h.peer_id === 'b')).toBeUndefined();
    const later = (ms: number) => {
      c.advance(ms);
      for (const id of ['a', 'b', 'c'])
        t.announce({ ...base, blob, units: 10, peer_id: id, address: `${id}:1`, full: false });
      r = t.lookup({ blob, peer_id: 'c', zone: '', want: [], max_peers: 8 });
    };
    // a's unit 1 is still on its way past the TTL (a seed shared by many nodes sends slowly): still pending
    later(6000);
    expect(pend('a')).toEqual([0b10, 0]);
    // the response reached a: the TTL counts from then
    t.delivered(blob, 'a', 0, 1);
    later(4000);
    expect(pend('a')).toEqual([0b10, 0]);
    later(2000);
    expect(pend('a')).toEqual([]);
    // what the seed defers: a unit on its way to another (healthy) peer; a send that failed is not
    t.assume(blob, 'a', [5, 6]);
    expect(t.pendingAtOthers(blob, 'c', [4, 5])).toBe(true);
    expect(t.pendingAtOthers(blob, 'a', [5])).toBe(false);
    t.unassume(blob, 'a', 5, 6);
    expect(t.pendingAtOthers(blob, 'c', [5, 6])).toBe(false);
    // sent again after the failed send: on its way once more
    t.assume(blob, 'a', [7]);
    expect(t.pendingAtOthers(blob, 'c', [7])).toBe(true);
    // delivered, dropped by the TTL (in a lookup), then another unit sent: only that one is on its way
    t.delivered(blob, 'a', 7, 7);
    later(6000);
    expect(t.pendingAtOthers(blob, 'c', [7])).toBe(false);
    t.assume(blob, 'a', [8]);
    expect(t.pendingAtOthers(blob, 'c', [7])).toBe(false);
    expect(t.pendingAtOthers(blob, 'c', [8])).toBe(true);
    expect(
      t.lookup({ blob: 'sha256:' + '3'.repeat(64), peer_id: 'c', zone: '', want: [], max_peers: 8 })
        .seed_bitmap.length,
    ).toBe(0);
  });

  it('expires each delivered unit at its own time, as a model that walks every unit on each check', () => {
    const ttl = 1000;
    const op = fc.oneof(
      fc.record({ k: fc.constant('assume' as const), u: fc.integer({ min: 0, max: 15 }) }),
      fc.record({ k: fc.constant('delivered' as const), u: fc.integer({ min: 0, max: 15 }) }),
      fc.record({ k: fc.constant('handBack' as const), u: fc.integer({ min: 0, max: 15 }) }),
      fc.record({ k: fc.constant('unassume' as const), u: fc.integer({ min: 0, max: 15 }) }),
      fc.record({ k: fc.constant('wait' as const), u: fc.integer({ min: 1, max: 700 }) }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
        const clock = manualTimers();
        const t = new TrackerState({ timers: clock.timers, pendingTtlMs: ttl });
        const join = (id: string, full: boolean) =>
          t.announce({
            ...base,
            blob,
            units: 16,
            peer_id: id,
            address: `${id}:1`,
            full,
            bitmap: new Uint8Array(2),
          });
        join('a', true);
        join('c', true);
        const model = new Map<number, number>();
        for (const o of ops) {
          if (o.k === 'wait') {
            clock.advance(o.u);
            join('a', false);
          } else if (o.k === 'assume') {
            t.assume(blob, 'a', [o.u]);
            model.set(o.u, Infinity);
          } else if (o.k === 'delivered' || o.k === 'handBack') {
            // handed back: on its way again, from now; delivered: from now if it was on its way
            if (o.k === 'handBack') {
              t.handBack(blob, 'a', [o.u]);
              model.set(o.u, clock.timers.now());
            } else {
              t.delivered(blob, 'a', o.u, o.u);
              if (model.get(o.u) === Infinity) model.set(o.u, clock.timers.now());
            }
          } else {
            t.unassume(blob, 'a', o.u, o.u);
            model.delete(o.u);
          }
          for (const [u, at] of model) if (clock.timers.now() - at > ttl) model.delete(u);
          for (let u = 0; u < 16; u++) expect(t.pendingAtOthers(blob, 'c', [u])).toBe(model.has(u));
        }
      }),
      { numRuns: 300 },
    );
  });

  it('rarities follow holders turning usable and unusable exactly as a count from scratch', () => {
    const units = 77;
    fc.assert(
      fc.property(
        fc.array(fc.uniqueArray(fc.integer({ min: 0, max: units - 1 }), { maxLength: units }), {
          minLength: 1,
          maxLength: 8,
        }),
        fc.array(fc.array(fc.boolean(), { minLength: 8, maxLength: 8 }), { minLength: 1, maxLength: 12 }),
        (holdings, masks) => {
          const v = viewOf(units - 1);
          v.setHolders({ holders: holdings.map((h, i) => holder('p' + i, units, h)), units });
          for (const m of masks) {
            const usable = (h: { id: string }) => m[Number(h.id.slice(1))]!;
            const got = Array.from(v.rarities(usable));
            const want = Array.from(
              { length: units },
              (_, u) => holdings.filter((h, i) => m[i] && h.includes(u)).length,
            );
            expect(got).toEqual(want);
          }
          // a new holder list counts again from scratch
          v.setHolders({ holders: [holder('p0', units, [3])], units });
          expect(v.rarities()[3]).toBe(1);
          expect(v.rarities().reduce((a, b) => a + b, 0)).toBe(1);
        },
      ),
      { numRuns: 200 },
    );
  });
});
