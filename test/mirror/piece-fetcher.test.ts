/**
 * The piece fetcher over a real BlobCache: pieces come from the first source that has them, a piece that
 * fails verification is reported to its source and taken from the next, a busy seed is waited for rather
 * than skipped for the origin, and pieces already held are not fetched again.
 */
import { describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import {
  deferredBySource,
  sourceUnavailable,
  type BlobRef,
  type BlockSource,
  type SourceKind,
} from '../../src/fetch/types.js';
import { fetchPieces } from '../../src/mirror/piece-fetcher.js';
import type { PieceTable } from '../../src/mirror/piece-table.js';
import { flipBits } from '../helpers/bytes.js';
import { randomPieceFile } from '../helpers/piece-file.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const P = 64 * 1024;
const cleanups = cleanupsAfterEach();

const setup = (pieces = 8) => randomPieceFile(cleanups, P, pieces);

/** A source serving `data`, optionally refusing, lying or failing on some pieces; records calls and reports. */
function source(
  kind: SourceKind,
  data: Buffer,
  behave: (piece: number) => 'ok' | 'none' | 'lie' | 'timeout' = () => 'ok',
) {
  const calls: number[] = [];
  const bad: number[] = [];
  const s: BlockSource = {
    kind,
    name: kind,
    fetch(_b: BlobRef, offset: number, length: number) {
      const u = offset / P;
      calls.push(u);
      const how = behave(u);
      if (how === 'none') return Promise.reject(sourceUnavailable(`${kind} has no piece ${u}`));
      if (how === 'timeout') return Promise.reject(DfError.timeout(`${kind} busy`));
      const out = Buffer.from(data.subarray(offset, offset + length));
      if (how === 'lie') flipBits(out, 7);
      return Promise.resolve(out);
    },
    badBlock(_b, _d, offset) {
      bad.push(offset);
    },
  };
  return { s, calls, bad };
}

const all = (t: PieceTable) => [...Array(Math.ceil(t.size / P)).keys()];

describe('piece fetcher', () => {
  it('takes each piece from the first source that has it and the cache then verifies whole', async () => {
    const { data, table, open } = await setup();
    const cache = await open();
    const peers = source('peer', data, (u) => (u % 2 ? 'ok' : 'none'));
    const seed = source('seed', data);
    const origin = source('registry', data);
    const bytes = await fetchPieces({
      table,
      cache,
      sources: [peers.s, seed.s, origin.s],
      signal: new AbortController().signal,
      concurrency: 3,
    });
    expect(bytes.peer! + bytes.seed!).toBe(table.size);
    expect(seed.calls.sort((a, b) => a - b)).toEqual(all(table).filter((u) => u % 2 === 0));
    expect(origin.calls).toEqual([]);
    expect(cache.isComplete).toBe(true);
    expect((await cache.verifyComplete()).ok).toBe(true);
  });

  it('a lying peer: its piece fails verification, is reported and comes from the seed; nothing bad is stored', async () => {
    const { data, table, open } = await setup();
    const cache = await open();
    const peers = source('peer', data, (u) => (u === 3 ? 'lie' : 'ok'));
    const seed = source('seed', data);
    const bytes = await fetchPieces({
      table,
      cache,
      sources: [peers.s, seed.s],
      signal: new AbortController().signal,
    });
    expect(peers.bad).toEqual([0]);
    expect(seed.calls).toEqual([3]);
    expect(bytes.seed).toBe(P);
    expect((await cache.verifyComplete()).ok).toBe(true);
  });

  it('waits for a busy seed instead of going to the origin', async () => {
    const { data, table, open } = await setup(2);
    const cache = await open();
    let busy = 2;
    const seed = source('seed', data, (u) => (u === 1 && busy-- > 0 ? 'timeout' : 'ok'));
    const origin = source('registry', data);
    await fetchPieces({
      table,
      cache,
      sources: [seed.s, origin.s],
      signal: new AbortController().signal,
      rounds: 4,
    });
    expect(origin.calls).toEqual([]);
    expect(seed.calls.filter((u) => u === 1)).toHaveLength(3);
  });

  it('fails naming the piece when every source lies, after storing the others; a rerun asks only for it', async () => {
    const { data, table, open } = await setup(4);
    const cache = await open();
    const lying = source('registry', data, (u) => (u === 2 ? 'lie' : 'ok'));
    await expect(
      fetchPieces({
        table,
        cache,
        sources: [lying.s],
        signal: new AbortController().signal,
        rounds: 1,
        concurrency: 1,
      }),
    ).rejects.toThrow(/piece 2 .*does not match/);
    expect(cache.has(2)).toBe(false);
    // a rerun asks only for what is missing
    const good = source('registry', data);
    const bytes = await fetchPieces({
      table,
      cache,
      sources: [good.s],
      signal: new AbortController().signal,
    });
    expect(good.calls).toEqual([2]);
    expect(bytes.cache).toBe(table.size - P);
    expect((await cache.verifyComplete()).ok).toBe(true);
  });

  it('a table still filling: unknown pieces come from the seed only, checked against the digest it sends', async () => {
    const { data, table, open } = await setup(4);
    const cache = await open();
    const filling: PieceTable = { ...table, pieces: table.pieces.slice(0, 2), filling: true };
    const peer = source('peer', data);
    const origin = source('registry', data);
    const seedCalls: number[] = [];
    let lies = 1;
    const seed: BlockSource = {
      kind: 'seed',
      name: 'seed',
      fetch(_b, offset, length, _s, ctx) {
        const u = offset / P;
        seedCalls.push(u);
        ctx?.pieceDigest?.(table.pieces[u]!);
        const out = Buffer.from(data.subarray(offset, offset + length));
        // once, bytes other than the digest it sent with them: refused, asked again
        if (u === 3 && lies-- > 0) flipBits(out, 3);
        return Promise.resolve(out);
      },
    };
    let refreshes = 0;
    await fetchPieces({
      table: filling,
      cache,
      sources: [peer.s, seed, origin.s],
      signal: new AbortController().signal,
      // the seed has hashed nothing more since
      refresh: () => (refreshes++, Promise.resolve({ ...filling, pieces: table.pieces.slice(0, 2) })),
    });
    expect(peer.calls.sort()).toEqual([0, 1]);
    expect(seedCalls.sort()).toEqual([2, 3, 3]);
    expect(origin.calls).toEqual([]);
    expect(refreshes).toBeGreaterThan(0);
    expect((await cache.verifyComplete()).ok).toBe(true);
    // every piece known and checked: the table is the seed's final one
    expect(filling.filling).toBeUndefined();
    expect(filling.pieces).toEqual(table.pieces);
  });

  it('a table still filling: a refresh lets peers serve what the seed hashed since; a piece without a digest is refused', async () => {
    const { data, table, open } = await setup(3);
    const cache = await open();
    const filling: PieceTable = { ...table, pieces: [], filling: true };
    const peer = source('peer', data);
    const quiet = source('seed', data);
    await expect(
      fetchPieces({
        table: filling,
        cache,
        sources: [peer.s, quiet.s],
        signal: new AbortController().signal,
        rounds: 1,
        concurrency: 1,
      }),
    ).rejects.toThrow(/sent no digest/);
    expect(peer.calls).toEqual([]);
    expect(cache.filledBytes).toBe(0);
    const bytes = await fetchPieces({
      table: filling,
      cache,
      sources: [peer.s, quiet.s],
      signal: new AbortController().signal,
      refresh: () => Promise.resolve(table),
    });
    expect(bytes.peer).toBe(table.size);
    expect(filling.filling).toBeUndefined();
  });

  it('stops at once when the seed says its origin sent another file', async () => {
    const { table, open } = await setup(6);
    const cache = await open();
    let calls = 0;
    const seed: BlockSource = {
      kind: 'seed',
      name: 'seed',
      fetch: () => {
        calls++;
        return Promise.reject(new DfError('DIGEST_MISMATCH', "the seed's origin sent another file"));
      },
    };
    await expect(
      fetchPieces({
        table: { ...table, pieces: [], filling: true },
        cache,
        sources: [seed],
        signal: new AbortController().signal,
        concurrency: 2,
      }),
    ).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
    expect(calls).toBe(2);
  });

  it('keeps at most seedConcurrency requests at the seed, and a deferred piece frees its worker for another', async () => {
    const { data, table, open } = await setup(8);
    const cache = await open();
    const peers = source('peer', data, () => 'none');
    const calls: number[] = [];
    let inFlight = 0;
    let most = 0;
    let defers = 2;
    const seed: BlockSource = {
      kind: 'seed',
      name: 'seed',
      async fetch(_b, offset, length) {
        const u = offset / P;
        calls.push(u);
        // piece 0 is on its way to another node, twice
        if (u === 0 && defers-- > 0) throw deferredBySource(`piece 0 goes to another node`);
        most = Math.max(most, ++inFlight);
        await new Promise((r) => setTimeout(r, 20));
        inFlight--;
        return Buffer.from(data.subarray(offset, offset + length));
      },
    };
    const bytes = await fetchPieces({
      table,
      cache,
      sources: [peers.s, seed],
      signal: new AbortController().signal,
      concurrency: 6,
      seedConcurrency: 2,
      window: 1,
    });
    expect(bytes.seed).toBe(table.size);
    expect(most).toBe(2);
    // piece 0 deferred: the next pieces were asked for before it was asked again, and all of them before
    // it was served (its retry waits 250 ms)
    expect(calls[0]).toBe(0);
    expect(calls.indexOf(1)).toBeLessThan(calls.indexOf(0, 1));
    expect(
      calls
        .slice(0, -1)
        .filter((u) => u !== 0)
        .sort(),
    ).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(calls.filter((u) => u === 0)).toHaveLength(3);
    // the peers were asked for the pieces that waited (the deferred one, and those the seed's share held back)
    expect(peers.calls.filter((u) => u === 0).length).toBe(3);
    expect((await cache.verifyComplete()).ok).toBe(true);
  });
});
