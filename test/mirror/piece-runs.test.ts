/**
 * PieceRuns (a raw file's pieces as planner runs) and fetchThroughSwarm over a real BlobCache: a run from a
 * peer is split into pieces, each checked against the table and stored; a lying peer is reported for the
 * piece it lied about and the run fails; a piece a filling table does not list yet comes only from the
 * seed, alone, checked against the digest it sends; the seed's DIGEST_MISMATCH is final; what the planner
 * pass leaves is finished by the per-piece fetcher.
 */
import { describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import {
  deferredBySource,
  isDeferred,
  Priority,
  sourceUnavailable,
  type BlobRef,
  type BlockSource,
  type SourceKind,
} from '../../src/fetch/types.js';
import { fetchThroughSwarm, PieceRuns } from '../../src/mirror/piece-runs.js';
import type { PieceTable } from '../../src/mirror/piece-table.js';
import type { RunFetcher } from '../../src/p2p/fill-planner.js';
import { flipBits } from '../helpers/bytes.js';
import { randomPieceFile } from '../helpers/piece-file.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const P = 64 * 1024;
const cleanups = cleanupsAfterEach();

async function setup(pieces = 8) {
  const f = await randomPieceFile(cleanups, P, pieces);
  return { ...f, cache: await f.open() };
}

/** A source serving `data` (the piece digest header for exact pieces), optionally lying about one piece. */
function source(
  kind: SourceKind,
  data: Buffer,
  table: PieceTable,
  o: { lieAt?: number; fail?: DfError } = {},
) {
  const calls: [number, number][] = [];
  const bad: [number, number][] = [];
  const s: BlockSource = {
    kind,
    name: kind,
    fetch(_b: BlobRef, offset: number, length: number, _s, ctx) {
      calls.push([offset / P, length]);
      if (o.fail) return Promise.reject(o.fail);
      const out = Buffer.from(data.subarray(offset, offset + length));
      if (o.lieAt !== undefined) flipBits(out.subarray((o.lieAt - offset / P) * P), 3);
      if (ctx?.pieceDigest && length <= P) ctx.pieceDigest(table.pieces[offset / P]!);
      return Promise.resolve(out);
    },
    badBlock(_b, _d, offset, length) {
      bad.push([offset, length]);
    },
  };
  return { s, calls, bad };
}

const signal = new AbortController().signal;

describe('PieceRuns', () => {
  it('splits a peer run into pieces, checks and stores each, and counts them by source', async () => {
    const { data, table, layout, cache } = await setup();
    const peer = source('peer', data, table);
    const seed = source('seed', data, table);
    const got: [number, number, SourceKind][] = [];
    const runs = new PieceRuns({
      table,
      layout,
      cache,
      peers: peer.s,
      seed: seed.s,
      onPiece: (u, n, from) => got.push([u, n, from]),
    });
    await runs.units([5, 6, 7], Priority.Fill, signal, { only: ['peer'] });
    expect(peer.calls).toEqual([[5, 3 * P - 99]]);
    expect(seed.calls).toEqual([]);
    expect(got).toEqual([
      [5, P, 'peer'],
      [6, P, 'peer'],
      [7, P - 99, 'peer'],
    ]);
    for (const u of [5, 6, 7]) expect(cache.has(u)).toBe(true);
    expect((await cache.read(5 * P, 3 * P - 99)).equals(data.subarray(5 * P))).toBe(true);
  });

  it('a peer that lies about one piece of a run is reported for that piece; the run fails, the piece is not stored', async () => {
    const { data, table, layout, cache } = await setup();
    const peer = source('peer', data, table, { lieAt: 3 });
    const runs = new PieceRuns({ table, layout, cache, peers: peer.s, seed: source('seed', data, table).s });
    const err = await runs.units([2, 3, 4], Priority.Fill, signal, { only: ['peer'] }).catch((e) => e);
    expect(DfError.from(err).code).toBe('CORRUPT');
    // offset within the answer, and the piece's length
    expect(peer.bad).toEqual([[P, P]]);
    expect(cache.has(2)).toBe(true);
    expect(cache.has(3)).toBe(false);
    expect(cache.has(4)).toBe(false);
    expect(runs.inFlight(3)).toBe(false);
  });

  it('with a filling table: an unlisted piece is deferred by peers and comes from the seed alone, checked against its digest', async () => {
    const { data, table, layout, cache } = await setup();
    const filling: PieceTable = { ...table, pieces: table.pieces.slice(0, 2), filling: true };
    const peer = source('peer', data, table);
    const seed = source('seed', data, table);
    let refreshes = 0;
    const runs = new PieceRuns({
      table: filling,
      layout,
      cache,
      peers: peer.s,
      seed: seed.s,
      refresh: async () => void refreshes++,
    });
    // a peer run over listed pieces stops where the table stops
    await runs.units([1, 2, 3], Priority.Fill, signal, { only: ['peer'] });
    expect(peer.calls).toEqual([[1, P]]);
    expect(refreshes).toBe(1);
    const err = await runs.units([2, 3], Priority.Fill, signal, { only: ['peer'] }).catch((e) => e);
    expect(isDeferred(err)).toBe(true);
    // from the seed: the first unlisted piece alone, with its digest
    await runs.units([2, 3], Priority.Fill, signal, { only: ['seed'] });
    expect(seed.calls).toEqual([[2, P]]);
    expect(filling.pieces[2]!.equals(table.pieces[2]!)).toBe(true);
    expect(cache.has(2)).toBe(true);
    expect(cache.has(3)).toBe(false);
  });

  it('an unlisted piece whose bytes do not match the digest the seed sent is refused', async () => {
    const { data, table, layout, cache } = await setup();
    const filling: PieceTable = { ...table, pieces: [], filling: true };
    const seed = source('seed', data, table, { lieAt: 0 });
    const runs = new PieceRuns({
      table: filling,
      layout,
      cache,
      peers: source('peer', data, table).s,
      seed: seed.s,
    });
    const err = await runs.units([0], Priority.Fill, signal, { only: ['seed'] }).catch((e) => e);
    expect(DfError.from(err).code).toBe('CORRUPT');
    expect(cache.has(0)).toBe(false);
    expect(filling.pieces[0]).toBeUndefined();
  });

  it('a piece the seed deferred three times is asked for without letting it defer', async () => {
    const { data, table, layout, cache } = await setup();
    const planned: boolean[] = [];
    const seed: BlockSource = {
      kind: 'seed',
      name: 'seed',
      fetch(_b, offset, length, _s, ctx) {
        planned.push(ctx?.planned === true);
        if (ctx?.planned) return Promise.reject(deferredBySource('at another node'));
        return Promise.resolve(Buffer.from(data.subarray(offset, offset + length)));
      },
    };
    const runs = new PieceRuns({ table, layout, cache, peers: source('peer', data, table).s, seed });
    for (let i = 0; i < 3; i++) {
      const err = await runs.units([4], Priority.Fill, signal, { only: ['seed'] }).catch((e) => e);
      expect(isDeferred(err)).toBe(true);
    }
    await runs.units([4], Priority.Fill, signal, { only: ['seed'] });
    expect(planned).toEqual([true, true, true, false]);
    expect(cache.has(4)).toBe(true);
    // another piece starts over
    await runs.units([5], Priority.Fill, signal, { only: ['seed'] }).catch(() => undefined);
    expect(planned.at(-1)).toBe(true);
  });

  it('urgent: a piece a reader waits on comes from a peer, else from the seed; not when held or on its way', async () => {
    const { data, table, layout, cache } = await setup();
    const peer = source('peer', data, table, { fail: sourceUnavailable('no peer holds it') });
    const seed = source('seed', data, table);
    const runs = new PieceRuns({ table, layout, cache, peers: peer.s, seed: seed.s });
    await runs.urgent(2, signal);
    expect(peer.calls).toEqual([[2, P]]);
    expect(seed.calls).toEqual([[2, P]]);
    expect(cache.has(2)).toBe(true);
    // held: nothing asked
    await runs.urgent(2, signal);
    expect(peer.calls.length + seed.calls.length).toBe(2);
    // a peer that holds it: the seed is not asked
    const holder = source('peer', data, table);
    const seed2 = source('seed', data, table);
    const runs2 = new PieceRuns({ table, layout, cache, peers: holder.s, seed: seed2.s });
    await runs2.urgent(3, signal);
    expect(holder.calls).toEqual([[3, P]]);
    expect(seed2.calls).toEqual([]);
    // being fetched by the planner: not asked again
    let release!: () => void;
    const slow: BlockSource = {
      kind: 'peer',
      name: 'peer',
      fetch: (_b, offset, length) =>
        new Promise((r) => (release = () => r(Buffer.from(data.subarray(offset, offset + length))))),
    };
    const seed3 = source('seed', data, table);
    const runs3 = new PieceRuns({ table, layout, cache, peers: slow, seed: seed3.s });
    const planned = runs3.units([4], Priority.Fill, signal, { only: ['peer'] });
    await runs3.urgent(4, signal);
    expect(seed3.calls).toEqual([]);
    release();
    await planned;
    expect(cache.has(4)).toBe(true);
  });

  it("the seed's DIGEST_MISMATCH ends the pass (the seed is reported down to the planner) and is kept", async () => {
    const { data, table, layout, cache } = await setup();
    const mismatch = DfError.digestMismatch('file', table.digest, 'sha256:' + '0'.repeat(64));
    const seed = source('seed', data, table, { fail: mismatch });
    const runs = new PieceRuns({ table, layout, cache, peers: source('peer', data, table).s, seed: seed.s });
    const err = await runs.units([0], Priority.Fill, signal, { only: ['seed'] }).catch((e) => e);
    expect(DfError.from(err).details.sourceUnavailable).toBe(true);
    expect(runs.final?.code).toBe('DIGEST_MISMATCH');
    // later runs fail at once
    await expect(runs.units([1], Priority.Fill, signal, { only: ['peer'] })).rejects.toThrow();
    expect(seed.calls.length).toBe(1);
  });
});

describe('fetchThroughSwarm', () => {
  it('runs the planner pass first, then fetches what it left piece by piece; bytes by source', async () => {
    const { data, table, cache } = await setup();
    const peer = source('peer', data, table);
    const seed = source('seed', data, table);
    const origin = source('registry', data, table);
    // a planner that takes pieces 0-3 from peers in one run and 4 from the seed, then stops
    const swarm = {
      async fillUnits(digest: string, f: RunFetcher) {
        expect(digest).toBe(table.digest);
        await f.units([0, 1, 2, 3], Priority.Fill, signal, { only: ['peer'] });
        await f.units([4], Priority.Fill, signal, { only: ['seed'] });
      },
    };
    const bytes = await fetchThroughSwarm(swarm, {
      table,
      cache,
      sources: [peer.s, seed.s, origin.s],
      signal,
    });
    expect(peer.calls[0]).toEqual([0, 4 * P]);
    // the rest, one piece per request, peers first
    expect(
      peer.calls
        .slice(1)
        .map((c) => c[0])
        .sort(),
    ).toEqual([5, 6, 7]);
    expect(bytes).toEqual({ peer: 7 * P - 99, seed: P });
    expect(origin.calls).toEqual([]);
    expect(cache.isComplete).toBe(true);
    expect((await cache.verifyComplete()).ok).toBe(true);
  });

  it('a DIGEST_MISMATCH from the seed during the planner pass fails the fetch with it', async () => {
    const { data, table, cache } = await setup();
    const mismatch = DfError.digestMismatch('file', table.digest, 'sha256:' + '0'.repeat(64));
    const seed = source('seed', data, table, { fail: mismatch });
    const swarm = {
      async fillUnits(_d: string, f: RunFetcher) {
        await f.units([0], Priority.Fill, signal, { only: ['seed'] }).catch(() => undefined);
      },
    };
    const err = await fetchThroughSwarm(swarm, {
      table,
      cache,
      sources: [source('peer', data, table).s, seed.s, source('registry', data, table).s],
      signal,
    }).catch((e) => e);
    expect(DfError.from(err).code).toBe('DIGEST_MISMATCH');
  });
});
