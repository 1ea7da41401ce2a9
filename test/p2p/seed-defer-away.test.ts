/**
 * A seed's deferral (409) names the units it is sending other nodes (`x-dfnode-away`), so that a node's next
 * plan avoids them all instead of asking for them one run, and one round trip, at a time (bench/p2p at
 * N = 16: the seed answered ~1,800 deferrals in a fill, ~300 with the list). The list is a hint from a cluster
 * member: bounded and checked on both ends.
 */
import { describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { awayUnits, deferredBySource, isDeferred } from '../../src/fetch/types.js';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { p2pFill, type RunFetcher } from '../../src/p2p/fill-planner.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { claimUnits } from '../../src/p2p/seed-claims.js';
import { TrackerState } from '../../src/p2p/tracker-state.js';
import { encodeUnitRanges, parseUnitRanges } from '../../src/p2p/unit-ranges.js';
import { viewOf } from '../helpers/peer-view.js';

const DIGEST = 'sha256:' + '5e'.repeat(32);
const range = (a: number, b: number) => Array.from({ length: b - a }, (_, i) => a + i);

describe('unit ranges (x-dfnode-away)', () => {
  it('round-trips any set of units as merged ranges', () => {
    expect(encodeUnitRanges([9, 3, 4, 5, 5, 14, 20, 21, 22, 23])).toBe('3-5,9,14,20-23');
    expect(parseUnitRanges('3-5,9,14,20-23')).toEqual([3, 4, 5, 9, 14, 20, 21, 22, 23]);
    expect(encodeUnitRanges([])).toBe('');
    const many = range(0, 5000).filter((u) => u % 3 === 0);
    const v = encodeUnitRanges(many);
    // cut to the header bound, whole ranges only, and what is left parses to a prefix
    expect(v.length).toBeLessThanOrEqual(2048);
    const back = parseUnitRanges(v);
    expect(back.length).toBeGreaterThan(100);
    expect(back).toEqual(many.slice(0, back.length));
  });

  it('ignores values that are not of the form, too long, reversed, beyond 2^22 units or naming too many', () => {
    for (const bad of [
      undefined,
      '',
      ' 3',
      '3,',
      '3-',
      '-3',
      '+3',
      '3-5-7',
      'a-b',
      '5-3',
      '4194304',
      '0-70000',
      `${'1,'.repeat(1100)}1`,
      ['1', '2'],
      42,
    ])
      expect(parseUnitRanges(bad), JSON.stringify(bad)).toEqual([]);
    expect(parseUnitRanges('4194303')).toEqual([4194303]);
  });
});

describe('a deferral names what the seed is sending others', () => {
  it('the tracker lists units pending at other live peers, at most max, never the asker’s own', () => {
    const t = new TrackerState();
    for (const id of ['a', 'b', 'c'])
      t.announce({
        blob: DIGEST,
        units: 64,
        peer_id: id,
        address: `${id}:1`,
        zone: '',
        load: 0,
        full: true,
        bitmap: new Uint8Array(8),
        added: [],
        leave: false,
        failed_peers: [],
      });
    t.assume(DIGEST, 'a', range(0, 8));
    t.assume(DIGEST, 'b', range(16, 20));
    t.assume(DIGEST, 'c', [40]);
    expect(new Set(t.pendingAtOthersList(DIGEST, 'c', 100))).toEqual(
      new Set([...range(0, 8), ...range(16, 20)]),
    );
    expect(t.pendingAtOthersList(DIGEST, 'c', 5)).toHaveLength(5);
    expect(t.pendingAtOthersList('sha256:' + '00'.repeat(32), 'c', 100)).toEqual([]);
    // claimUnits' deferral carries them
    let err: unknown;
    try {
      claimUnits(t, DIGEST, { peer: 'c', defer: true }, [2, 3], 'run');
    } catch (e) {
      err = e;
    }
    expect(isDeferred(err)).toBe(true);
    expect(new Set(awayUnits(err))).toEqual(new Set([...range(0, 8), ...range(16, 20)]));
  });

  it('crosses the wire: the block server sends the list with its 409, the client hands it to the planner', async () => {
    let away: number[] = [3, 4, 5, 9];
    const provider: BlobProvider = {
      get: async () => ({
        size: 1 << 20,
        read: async () => {
          throw deferredBySource('on its way to another node', away);
        },
      }),
    };
    const server = new BlockServer({ provider, clusterToken: 't' });
    const address = await server.listen('127.0.0.1:0');
    const http = new HttpBlockClient('t', undefined, 'node-x');
    try {
      const ask = () =>
        http.get(address, DIGEST, 0, 4096, new AbortController().signal, { defer: '1' }).then(
          () => undefined,
          (e: unknown) => e,
        );
      let e = await ask();
      expect(isDeferred(e)).toBe(true);
      expect(awayUnits(e)).toEqual([3, 4, 5, 9]);
      // none to name: no list
      away = [];
      e = await ask();
      expect(isDeferred(e)).toBe(true);
      expect(awayUnits(e)).toEqual([]);
      expect(server.counters.deferred).toBe(2);
    } finally {
      await http.close();
      await server.close();
    }
  });

  it('the planner avoids every unit a deferral named, not only the run it asked for', async () => {
    // 64 blocks of 64 KiB; the seed holds all of them, no peer holds any
    const blocks = 64;
    const have = new Set<number>([blocks]);
    const view = viewOf(blocks, have);
    const seedBits = Buffer.alloc(Math.ceil((blocks + 1) / 8), 0xff);
    view.setHolders({ holders: [], units: blocks + 1, seed_bitmap: seedBits });
    const asked: number[][] = [];
    const ac = new AbortController();
    // the one piece (16 units) left free: one the first run is not in
    let free: number[] = [];
    const fetcher: RunFetcher = {
      fillTurn: async () => 1 << 20,
      inFlight: () => false,
      units: async (units) => {
        asked.push(units);
        if (asked.length === 1) {
          free = units[0]! < 32 ? range(48, 64) : range(0, 16);
          // everything else is on its way to other nodes
          throw deferredBySource(
            'on its way',
            range(0, blocks).filter((u) => !free.includes(u)),
          );
        }
        for (const u of units) have.add(u);
        if (free.every((u) => have.has(u))) ac.abort();
        return undefined;
      },
    };
    await p2pFill(view, fetcher, { concurrency: 1, signal: ac.signal, waitMs: 50 }).catch((e: unknown) => {
      if (!(e instanceof DfError) && !ac.signal.aborted) throw e;
    });
    // after the deferral, only the units it did not name were asked for, and all of them
    expect(asked.length).toBeGreaterThan(1);
    for (const run of asked.slice(1)) for (const u of run) expect(free).toContain(u);
    expect(free.every((u) => have.has(u))).toBe(true);
  });
});
