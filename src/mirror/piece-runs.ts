import type { BlobCache } from '../cache/blob-cache.js';
import { DfError } from '../errors.js';
import {
  deferredBySource,
  isDeferred,
  Priority,
  sourceUnavailable,
  type BlobRef,
  type BlockSource,
  type SourceKind,
} from '../fetch/types.js';
import type { RunFetcher } from '../p2p/fill-planner.js';
import { realTimers } from '../util/timers.js';
import { fetchPieces, refresher, type BytesBySource, type PieceFetchOptions } from './piece-fetcher.js';
import { acceptPiece, PieceLayout, type PieceTable } from './piece-table.js';

/**
 * After the seed deferred a piece this many times (each time the planner waits ~2 s for the node it is at),
 * the piece is asked of the seed without letting it defer.
 */
const MAX_DEFERRALS = 3;

/** The P2P tier's planner pass over a joined blob (P2pNode.fillUnits). */
export interface SwarmFill {
  fillUnits(digest: string, fetcher: RunFetcher, signal: AbortSignal): Promise<void>;
}

/**
 * Moves the missing pieces of a raw file the node has joined the swarm of (P2pNode.joinUnits) into its
 * cache: first the P2P planner's pass, as for layers (pieces rarest first from peers, the seed's share from
 * the seed, each verified: PieceRuns), then fetchPieces for whatever it left (failed runs, no seed up:
 * peers → seed → origin per piece, with retries). Returns the bytes by source.
 */
export async function fetchThroughSwarm(
  swarm: SwarmFill,
  opts: PieceFetchOptions,
  /** Told of the planner pass's runs while it goes on (PieceRuns.urgent), then of undefined. */
  during?: (runs: PieceRuns | undefined) => void,
): Promise<BytesBySource> {
  const { table, cache, signal } = opts;
  const bytes: BytesBySource = {};
  if (cache.filledBytes) bytes.cache = cache.filledBytes;
  const onPiece = (u: number, n: number, from: SourceKind) => {
    bytes[from] = (bytes[from] ?? 0) + n;
    opts.onPiece?.(u, n, from);
  };
  const peers = opts.sources.find((s) => s.kind === 'peer');
  const seed = opts.sources.find((s) => s.kind === 'seed');
  if (peers && seed) {
    const runs = new PieceRuns({
      table,
      layout: new PieceLayout(table.size, table.pieceSize),
      cache,
      peers,
      seed,
      ...(opts.refresh && {
        refresh: refresher(table, opts.refresh, opts.timers ?? realTimers),
      }),
      onPiece,
    });
    during?.(runs);
    try {
      await swarm.fillUnits(table.digest, runs, signal);
    } finally {
      during?.(undefined);
    }
    signal.throwIfAborted();
    if (runs.final) throw runs.final;
  }
  await fetchPieces({ ...opts, onPiece });
  return bytes;
}

export interface PieceRunsOptions {
  table: PieceTable;
  layout: PieceLayout;
  /** The file's cache, its layout set to the table's pieces. */
  cache: BlobCache;
  peers: BlockSource;
  seed: BlockSource;
  /** Merges the seed's newer table into `table` (rate-limited; see piece-fetcher's refresher). */
  refresh?: (signal: AbortSignal) => Promise<void>;
  /** Told of each piece stored (after verification). */
  onPiece?: (piece: number, bytes: number, from: SourceKind) => void;
  /** Largest run (bytes) asked of one source. Default 4 MiB. */
  maxRunBytes?: number;
}

/**
 * A raw file's pieces as runs for the P2P fill planner (p2pFill): the planner chooses the pieces (rarest
 * first from peers, the seed's share from the seed) and where they come from; this moves one run from that
 * source, checks every piece against the piece table (a piece a filling table does not list yet comes only
 * from the seed, one at a time, checked against the digest it sends with it) and stores it. A piece that
 * fails its check is reported to its source (which isolates the peer) and fails the run; the planner plans
 * around it. The origin is not a source here: what the planner leaves goes to fetchPieces.
 */
export class PieceRuns implements RunFetcher {
  private readonly flying = new Set<number>();
  /** Pieces the seed deferred (on their way to, or held by, another node) → how many times. */
  private readonly deferred = new Map<number, number>();
  private readonly blob: BlobRef;
  /** The seed's origin sent another file: no source will have the one asked for. */
  final: DfError | undefined;

  constructor(private readonly o: PieceRunsOptions) {
    this.blob = { digest: o.table.digest, size: o.table.size };
  }

  fillTurn(maxRunBytes: number): Promise<number> {
    return Promise.resolve(Math.min(maxRunBytes, this.o.maxRunBytes ?? 4 * 1024 * 1024));
  }

  inFlight(u: number): boolean {
    return this.flying.has(u);
  }

  /**
   * A reader waits on piece u (the registry mirror streams a blob in order, the planner takes pieces in any
   * order): fetched now unless it is held or being fetched here, from a peer that holds it, else from the
   * seed (which may defer it to the node it is on its way to). Failures are left to the planner.
   */
  async urgent(u: number, signal: AbortSignal): Promise<void> {
    for (const kind of ['peer', 'seed'] as const) {
      if (signal.aborted || this.flying.has(u) || this.o.cache.has(u)) return;
      try {
        await this.units([u], Priority.Fill, signal, { only: [kind] });
        return;
      } catch {
        // no peer holds it, or it failed: the seed next; after the seed, the planner
      }
    }
  }

  async units(
    units: number[],
    _priority: Priority,
    signal?: AbortSignal,
    opts: { only?: readonly SourceKind[] } = {},
  ): Promise<void> {
    const kind = opts.only?.[0];
    const src = kind === 'peer' ? this.o.peers : kind === 'seed' ? this.o.seed : undefined;
    if (!src || !units.length) throw sourceUnavailable(`pieces of ${this.blob.digest}: no ${kind} source`);
    if (this.final) throw sourceUnavailable(this.final.message);
    const sig = signal ?? new AbortController().signal;
    const { table, layout } = this.o;
    if (units.some((u) => !table.pieces[u])) await this.o.refresh?.(sig);
    // the run as far as the table knows its pieces (the first unknown one alone, from the seed only)
    let run = units;
    const unknown = units.findIndex((u) => !table.pieces[u]);
    if (unknown === 0) {
      if (src.kind !== 'seed')
        throw deferredBySource(`piece ${units[0]} of ${this.blob.digest}: its digest is not known yet`);
      run = units.slice(0, 1);
    } else if (unknown > 0) run = units.slice(0, unknown);
    for (let i = 1; i < run.length; i++)
      if (run[i] !== run[i - 1]! + 1) throw DfError.internal(`piece run of ${this.blob.digest} has a gap`);
    const offset = layout.offset(run[0]!);
    const length = layout.offset(run[run.length - 1]! + 1) - offset;
    for (const u of run) this.flying.add(u);
    try {
      let claimed: Buffer | undefined;
      let data: Buffer;
      try {
        data = await src.fetch(this.blob, offset, length, sig, {
          priority: Priority.Fill,
          // a piece the seed deferred again and again is asked for without that option: the node the
          // seed names may be one this node isolated (a liar the tracker still lists), or unreachable
          planned: src.kind !== 'seed' || (this.deferred.get(run[0]!) ?? 0) < MAX_DEFERRALS,
          ...(table.pieces[run[0]!] ? {} : { pieceDigest: (d: Buffer) => (claimed = d) }),
        });
      } catch (err) {
        if (src.kind === 'seed' && isDeferred(err))
          for (const u of run) this.deferred.set(u, (this.deferred.get(u) ?? 0) + 1);
        const e = DfError.from(err);
        if (src.kind === 'seed' && e.code === 'DIGEST_MISMATCH') {
          this.final = e;
          throw sourceUnavailable(e.message);
        }
        throw err;
      }
      if (data.length !== length)
        throw DfError.corrupt(
          `${src.name} sent ${data.length} bytes of ${this.blob.digest}, asked ${length}`,
        );
      for (const u of run) {
        const at = layout.offset(u) - offset;
        const piece = data.subarray(at, at + layout.length(u));
        try {
          acceptPiece(table, u, piece, claimed);
        } catch (err) {
          src.badBlock?.(this.blob, data, at, piece.length);
          throw err;
        }
        this.deferred.delete(u);
        await this.o.cache.write(u, layout.offset(u), piece, sig);
        this.o.onPiece?.(u, piece.length, src.kind);
      }
    } finally {
      for (const u of run) this.flying.delete(u);
    }
  }
}
