import type { BlobCache } from '../cache/blob-cache.js';
import { DfError } from '../errors.js';
import {
  isBusy,
  isDeferred,
  isSourceUnavailable,
  Priority,
  type BlobRef,
  type BlockSource,
  type SourceKind,
} from '../fetch/types.js';
import { realTimers, type Timers } from '../util/timers.js';
import { acceptPiece, mergeTable, PieceLayout, type PieceTable } from './piece-table.js';

/** Bytes that came from each kind of source (`cache`: pieces already held when the fetch started). */
export type BytesBySource = Partial<Record<SourceKind, number>>;

export interface PieceFetchOptions {
  table: PieceTable;
  /** The file's cache, its layout set to the table's pieces (PieceLayout.cacheLayout). */
  cache: BlobCache;
  /** In order: peers, the seed, the origin. */
  sources: readonly BlockSource[];
  signal: AbortSignal;
  /** Pieces in flight at once (default 4): bounds memory to concurrency × piece size. */
  concurrency?: number;
  /**
   * Of those, at most this many at the seed at once (default 2). A piece no peer holds while the seed's
   * share is taken waits, and the worker takes another piece (one a peer may hold): a node does not tie
   * every request up at the seed on pieces the seed has still to receive, and nodes fetching the same
   * file at once claim different pieces at the seed and trade the rest.
   */
  seedConcurrency?: number;
  /** Rounds over the sources before a piece fails (default 6), with a growing pause between. */
  rounds?: number;
  /**
   * Pieces are taken in random order within consecutive windows of this many (default: the whole file):
   * a small window keeps the pieces near file order for a reader that streams the file as it arrives
   * (the registry mirror) while nodes fetching at once still take different pieces.
   */
  window?: number;
  /**
   * A table still filling at the seed (cut-through): asks the seed for its table again, so that the pieces
   * it has hashed since can be taken from peers too (called when a piece's digest is not known; at most
   * twice a second, one call at a time). Without it, such a piece comes from the seed only, checked against
   * the digest the seed sends with it.
   */
  refresh?: (signal: AbortSignal) => Promise<PieceTable>;
  /** Told of each piece stored (after verification). */
  onPiece?: (piece: number, bytes: number, from: SourceKind) => void;
  timers?: Timers;
}

/**
 * Moves the missing pieces of a raw file into its cache: each piece from the first source that has it
 * (peers, then the seed, then the origin), verified against the piece table before it is written; a piece
 * that fails verification is reported to its source (which isolates the peer that sent it) and taken from
 * the next one. Pieces go in a random order, so that nodes fetching the same file at once take different
 * pieces from the seed and trade them among themselves. A seed that is slow (timeout) or busy (429) is
 * waited for, not skipped for the origin, so that the origin serves the file about once per cluster: the
 * origin serves a piece only when the seed source has no seed up (found down, or none). A piece that fails
 * in every round fails the fetch, after the other pieces were moved (a rerun fetches only what is missing).
 */
export async function fetchPieces(opts: PieceFetchOptions): Promise<BytesBySource> {
  const { table, cache, signal } = opts;
  const layout = new PieceLayout(table.size, table.pieceSize);
  const blob: BlobRef = { digest: table.digest, size: table.size };
  const timers = opts.timers ?? realTimers;
  const bytes: BytesBySource = {};
  const todo: number[] = [];
  for (let u = 0; u < layout.units; u++) if (!cache.has(u)) todo.push(u);
  if (cache.filledBytes) bytes.cache = cache.filledBytes;
  const window = Math.max(1, opts.window ?? todo.length);
  for (let w = 0; w < todo.length; w += window)
    for (let i = Math.min(todo.length, w + window) - 1; i > w; i--) {
      const j = w + Math.floor(Math.random() * (i - w + 1));
      [todo[i], todo[j]] = [todo[j]!, todo[i]!];
    }
  const rounds = opts.rounds ?? 6;
  const refresh = opts.refresh && refresher(table, opts.refresh, timers);
  const seedShare = Math.max(1, opts.seedConcurrency ?? 2);
  let atSeed = 0;

  /**
   * One attempt at a piece over the sources: 'done' once it is stored; otherwise how long (ms) until it is
   * tried again (deferred to another node, a busy or slow seed, the seed's share taken, a failed round).
   * Throws when it failed in every round, or at once on DIGEST_MISMATCH.
   */
  const attempt = async (p: Piece): Promise<'done' | number> => {
    const u = p.u;
    const offset = layout.offset(u);
    const length = layout.length(u);
    p.waitShare = false;
    if (!table.pieces[u] && refresh) await refresh(signal);
    for (const src of opts.sources) {
      const known = table.pieces[u];
      // a piece the table does not list yet: only the seed, which is fetching it, vouches for its bytes
      if (!known && src.kind !== 'seed') continue;
      // the seed's share is taken: this piece waits (peers may hold it by then), the worker takes another
      if (src.kind === 'seed' && atSeed >= seedShare) {
        p.waitShare = true;
        return SHARE_WAIT_MS;
      }
      let data: Buffer;
      let claimed: Buffer | undefined;
      if (src.kind === 'seed') atSeed++;
      try {
        // planned: a seed that is sending this piece to another node (or knows one that holds it) defers it
        // (taken from that node); after MAX_DEFERRALS, asked for without that option: served
        data = await src.fetch(blob, offset, length, signal, {
          priority: Priority.Fill,
          planned: p.deferrals < MAX_DEFERRALS,
          ...(known ? {} : { pieceDigest: (d: Buffer) => (claimed = d) }),
        });
      } catch (err) {
        if (signal.aborted) throw DfError.from(signal.reason);
        // on its way to another node: asked again shortly (peers first), not counted as a failed round
        if (isDeferred(err)) {
          p.deferrals++;
          return DEFER_MS;
        }
        // the seed's origin sent another file: no source will have the one asked for
        if (DfError.from(err).code === 'DIGEST_MISMATCH') throw err;
        // a seed that is alive but busy (429) or slow (timed out while heard from): this piece waits for
        // it rather than going to the origin, not counted as a failed round; only a seed found down sends
        // pieces there (its source finds it down after a few timeouts)
        if (src.kind === 'seed' && (isBusy(err) || DfError.from(err).code === 'TIMEOUT')) {
          p.last = err;
          return SEED_WAIT_MS;
        }
        if (isSourceUnavailable(err)) p.last ??= err;
        else p.last = err;
        continue;
      } finally {
        if (src.kind === 'seed') {
          atSeed--;
          changed();
        }
      }
      try {
        acceptPiece(table, u, data, claimed);
      } catch (err) {
        src.badBlock?.(blob, data, 0, length);
        p.last = err;
        continue;
      }
      await cache.write(u, offset, data, signal);
      bytes[src.kind] = (bytes[src.kind] ?? 0) + length;
      opts.onPiece?.(u, length, src.kind);
      return 'done';
    }
    if (++p.round < rounds) return Math.min(200 * 2 ** p.round, 5000);
    throw DfError.from(p.last ?? DfError.notFound('no source'), `piece ${u} of ${table.digest}`);
  };

  // the pieces not taken, in the order they are asked for; a piece that must wait goes back in its place
  // with the time it may be tried again
  const queue: Piece[] = todo.map((u, at) => ({ u, at, notBefore: 0, round: 0, deferrals: 0 }));
  let running = 0;
  let wakers: (() => void)[] = [];
  /** Something changed (a piece went back, the seed's share freed, a worker ended): waiting workers look. */
  function changed(): void {
    const w = wakers;
    wakers = [];
    for (const f of w) f();
  }
  const putBack = (p: Piece, ms: number) => {
    p.notBefore = timers.now() + ms;
    let lo = 0;
    let hi = queue.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (queue[mid]!.at < p.at) lo = mid + 1;
      else hi = mid;
    }
    queue.splice(lo, 0, p);
    changed();
  };
  /** The first piece that may be tried now, or how long until one may (Infinity: none queued). */
  const take = (): Piece | number => {
    const now = timers.now();
    let soonest = Infinity;
    for (let i = 0; i < queue.length; i++) {
      const p = queue[i]!;
      if (p.notBefore <= now || (p.waitShare && atSeed < seedShare)) return queue.splice(i, 1)[0]!;
      soonest = Math.min(soonest, p.notBefore - now);
    }
    return soonest;
  };
  /** Until `ms` passed or something changed. */
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      let h: unknown;
      const done = () => {
        if (h !== undefined) timers.clearTimeout(h);
        signal.removeEventListener('abort', done);
        resolve();
      };
      wakers.push(done);
      signal.addEventListener('abort', done, { once: true });
      if (Number.isFinite(ms)) h = timers.setTimeout(done, ms);
    });

  let failed: unknown;
  let final = false;
  const worker = async () => {
    // a piece that fails does not stop the others: what is verified stays for the rerun
    while (!signal.aborted && !final) {
      const p = take();
      if (typeof p === 'number') {
        // nothing queued and nothing in flight that could go back: done
        if (p === Infinity && running === 0) break;
        await pause(p);
        continue;
      }
      running++;
      try {
        const r = await attempt(p);
        if (r !== 'done') putBack(p, r);
      } catch (err) {
        failed ??= err;
        if (DfError.from(err).code === 'DIGEST_MISMATCH') final = true;
      } finally {
        running--;
        changed();
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, worker));
  if (signal.aborted && failed === undefined) throw DfError.from(signal.reason);
  if (failed !== undefined) throw failed;
  // every piece known (each checked against its digest): the table is the seed's final one
  let all = table.pieces.length === layout.units;
  for (let u = 0; all && u < layout.units; u++) all = table.pieces[u] !== undefined;
  if (all) delete table.filling;
  return bytes;
}

/**
 * A deferred piece is asked for again after this long (ms); after MAX_DEFERRALS, the seed is asked without
 * letting it defer (the node it named may be unreachable from here).
 */
const DEFER_MS = 250;
const MAX_DEFERRALS = 40;

/** A piece whose seed answered busy or timed out while alive is asked for again after this long (ms). */
const SEED_WAIT_MS = 1000;

/** A piece that waited for the seed's share (seedConcurrency) is tried again after this long, or sooner. */
const SHARE_WAIT_MS = 250;

/** A piece not stored yet: where it is in the order, when it may be tried again, its failed rounds. */
interface Piece {
  u: number;
  at: number;
  notBefore: number;
  round: number;
  deferrals: number;
  /** It waits for the seed's share: it may be tried as soon as the share frees. */
  waitShare?: boolean;
  last?: unknown;
}

/** Minimum time between two refreshes of a filling table (ms). */
const REFRESH_MS = 500;

/**
 * The refresh of a filling table: one call at a time, at most every REFRESH_MS, its answer merged into
 * `table` (mergeTable); a failed refresh changes nothing (the pieces then come from the seed).
 */
export function refresher(
  table: PieceTable,
  get: (signal: AbortSignal) => Promise<PieceTable>,
  timers: Timers,
): (signal: AbortSignal) => Promise<void> {
  let running: Promise<void> | undefined;
  let lastAt = -Infinity;
  return (signal) => {
    if (running) return running;
    if (!table.filling || timers.now() - lastAt < REFRESH_MS) return Promise.resolve();
    lastAt = timers.now();
    running = get(signal)
      .then((newer) => mergeTable(table, newer))
      .catch(() => undefined)
      .finally(() => (running = undefined));
    return running;
  };
}
