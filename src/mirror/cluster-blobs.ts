import type { BlobCache } from '../cache/blob-cache.js';
import type { CacheManager } from '../cache/cache-manager.js';
import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import type { BlockSource } from '../fetch/types.js';
import { silentLogger, type Logger } from '../log.js';
import { resolveClusterToken } from '../p2p/auth.js';
import type { SwarmMembership } from '../layer/swarm.js';
import type { P2pNode } from '../p2p/p2p-node.js';
import { childSignal, realTimers } from '../util/timers.js';
import type { BytesBySource } from './piece-fetcher.js';
import { fetchThroughSwarm, type PieceRuns } from './piece-runs.js';
import { decodeTable, MAX_TABLE_BYTES, PieceLayout, type PieceTable } from './piece-table.js';

/**
 * How long the mirror waits for a seed's piece table (the seed answers once the registry answered, or,
 * when the registry announces no size, once it fetched the whole blob).
 */
const TABLE_TIMEOUT_MS = 30 * 60 * 1000;
/**
 * Bytes of pieces in flight per blob (4 to 8 pieces: small pieces hide the latency of pieces deferred to
 * other nodes), and the window they are taken from in random order (near file order).
 */
const INFLIGHT_BYTES = 8 * 1024 * 1024;
const WINDOW = 8;
/**
 * A piece a reader has waited on this long is fetched before the planner's choices (ms), and asked for
 * again every URGENT_AGAIN_MS while it is still missing: an engine's stream keeps moving (containerd's CRI,
 * since 1.7, cancels a pull that makes no progress for `image_pull_progress_timeout`).
 */
const URGENT_MS = 2000;
const URGENT_AGAIN_MS = 2000;
/** A blob stays in the swarm (its pieces served to peers) this long after its last reader. */
const LINGER_MS = 120_000;

/** A blob the mirror answers from the node's cache or through the cluster. */
export interface ClusterBlob {
  readonly size: number;
  /** 'cache': complete in the node's cache; 'cluster': pieces through peers → seed → registry. */
  readonly source: 'cache' | 'cluster';
  /** Bytes [start, end) in order, each piece only once it is verified and stored. */
  read(start: number, end: number, signal: AbortSignal): AsyncGenerator<Buffer>;
  release(): void;
}

/**
 * Where the mirror answers blobs from besides the registry: a node's cache and P2P tier (ClusterBlobs), or a
 * seed's own files (seed-mirror-blobs.ts). `open` gives the blob, or why it cannot (then the registry).
 */
export interface BlobHolder {
  open(req: ClusterBlobRequest, signal: AbortSignal): Promise<ClusterBlob | string>;
  /** Bytes of pieces moved into the node's cache, by source. */
  readonly bytes: Partial<Record<string, number>>;
  /** The size of `digest` when it is held complete here (a HEAD while the registry is down). */
  heldSize(digest: string): number | undefined;
  close(): Promise<void>;
}

/** Where the blob is, and who may fetch its pieces from the registry (the engine's own credentials). */
export interface ClusterBlobRequest {
  registry: string;
  repository: string;
  digest: string;
  /** The last source of the piece chain: the registry, with the requesting engine's credentials. */
  origin: BlockSource;
}

export interface ClusterBlobsOptions {
  caches: CacheManager;
  /** The node's P2P tier; without it only blobs complete in the cache are answered. */
  p2p?: P2pNode;
  config: Config;
  logger?: Logger;
}

interface Entry {
  digest: string;
  cache: BlobCache;
  source: 'cache' | 'cluster';
  refs: number;
  member?: SwarmMembership;
  /** Settles when every piece is stored and the whole blob verified (or the fetch failed). */
  done: Promise<void>;
  failed?: unknown;
  finished: boolean;
  /** Woken when a piece arrives or the fetch ends. */
  waiters: Set<() => void>;
  removeListener?: () => void;
  linger?: ReturnType<typeof setTimeout>;
  abort: AbortController;
  bytes: BytesBySource;
  /** The pieces (cluster); a cache-held blob is read as one unit. */
  layout?: PieceLayout;
  /** The planner pass's runs while it goes on: a piece a reader waits on is fetched first. */
  runs?: PieceRuns;
  dropped?: Promise<void>;
}

/**
 * The registry mirror's blobs through the node's cache and P2P tier. A blob complete in the cache is
 * answered from it; otherwise the blob's seed is asked for its piece table (`?repo=REGISTRY/REPO`: the seed
 * fetches the blob from the registry once for the whole cluster, when `p2p.seedRegistries` allows it), the
 * pieces move peers → seed → registry into the cache, each verified against the table, near file order
 * (random within a window of 8 pieces), and readers stream them as they are stored, in order. One fetch per
 * blob however many engines ask; the blob stays in the swarm for a while after its last reader. When the
 * cluster cannot serve the blob, `open` returns the reason and the mirror streams from the registry.
 */
export class ClusterBlobs implements BlobHolder {
  private readonly entries = new Map<string, Entry>();
  private readonly opening = new Map<string, Promise<Entry | string>>();
  private readonly log: Logger;
  private closed = false;
  /** Bytes moved into the cache by source (peer, seed, registry), for metrics. */
  readonly bytes: BytesBySource = {};

  constructor(private readonly opts: ClusterBlobsOptions) {
    this.log = (opts.logger ?? silentLogger).child({ component: 'mirror-blobs' });
  }

  /** The blob, or why the cluster cannot answer it (the mirror then streams it from the registry). */
  async open(req: ClusterBlobRequest, signal: AbortSignal): Promise<ClusterBlob | string> {
    if (this.closed) return 'the node is shutting down';
    let e = this.entries.get(req.digest);
    if (!e) {
      let p = this.opening.get(req.digest);
      if (!p) {
        p = this.start(req, signal).finally(() => this.opening.delete(req.digest));
        this.opening.set(req.digest, p);
      }
      const got = await p;
      if (typeof got === 'string') return got;
      e = got;
    }
    return this.handle(e);
  }

  private handle(e: Entry): ClusterBlob {
    e.refs++;
    if (e.linger) clearTimeout(e.linger);
    e.linger = undefined;
    let released = false;
    return {
      size: e.cache.size,
      // a blob the cluster finished is answered from the cache
      source: e.finished && e.failed === undefined ? 'cache' : e.source,
      read: (start, end, signal) => this.read(e, start, end, signal),
      release: () => {
        if (released) return;
        released = true;
        if (--e.refs === 0) this.idle(e);
      },
    };
  }

  private async start(req: ClusterBlobRequest, signal: AbortSignal): Promise<Entry | string> {
    const { caches, p2p, config } = this.opts;
    const held = caches.list().find((b) => b.digest === req.digest && b.complete);
    if (held) {
      const cache = await caches.open({ digest: held.digest, size: held.size }, signal);
      const ok = cache.isComplete && (cache.verified || (await cache.verifyComplete(signal)).ok);
      if (ok) return this.add(req.digest, cache, 'cache');
      await caches.release(cache);
    }
    if (!p2p || !config.p2p.seeds.length) return 'no seed is configured (p2p.seeds)';
    if (!resolveClusterToken(config.p2p)) return 'no cluster token (p2p.clusterToken)';
    const tq = childSignal(signal, TABLE_TIMEOUT_MS, realTimers, 'piece table');
    let table: PieceTable;
    let seed: string;
    const query = { repo: `${req.registry}/${req.repository}`, digest: req.digest };
    // the blob's tracker connection is set up while the seed answers the table: the first announce (which
    // the pieces wait for) is then one round trip
    p2p.prepare({ digest: req.digest, size: 0 });
    try {
      const got = await p2p.fileTable(req.digest, query, MAX_TABLE_BYTES, tq.signal);
      seed = got.seed;
      table = decodeTable(got.table, req.digest);
    } catch (err) {
      if (signal.aborted) throw DfError.from(err);
      return `the seed gave no piece table: ${DfError.from(err).message}`;
    } finally {
      tq.dispose();
    }
    const layout = new PieceLayout(table.size, table.pieceSize);
    const cache = await caches.open({ digest: table.digest, size: table.size }, signal);
    try {
      if (cache.isComplete && (cache.verified || (await cache.verifyComplete(signal)).ok))
        return this.add(req.digest, cache, 'cache');
      const want = layout.cacheLayout;
      const cur = cache.layout;
      if (
        cur &&
        (cur.blockCount !== want.blockCount || cur.tocOffset !== want.tocOffset) &&
        cache.presentUnits &&
        caches.users(table.digest) > 1
      )
        // a DFB layer partly held and open in the layer store: its units are blocks, not pieces. Open by
        // nobody else (pieces of another size, left by a node restarted across an upgrade; a layer not
        // mounted), the cache is reset to this table's pieces below.
        throw new DfError('FAILED_PRECONDITION', 'the blob is cached as a DFB layer still filling');
      await cache.setLayout(want.blockCount, want.tocOffset, signal);
    } catch (err) {
      await caches.release(cache);
      if (signal.aborted) throw DfError.from(err);
      return `the cache cannot take the blob's pieces: ${DfError.from(err).message}`;
    }
    let member: SwarmMembership | undefined;
    try {
      member = p2p.joinUnits({ blob: { digest: table.digest, size: table.size }, layout, cache });
    } catch (err) {
      this.log.debug({ err, digest: req.digest }, 'mirror: blob not joined to the swarm');
    }
    // the seed learns of this node first (bounded: the tracker client has its own deadline), so that it
    // can defer other nodes' requests for the pieces it sends here from the first piece on
    if (table.filling) await member?.announced;
    const e = this.add(req.digest, cache, 'cluster', member);
    e.layout = layout;
    e.removeListener = cache.addUnitListener({ present: () => wake(e), reset: () => wake(e) });
    // a table still filling at the seed: asked again (of the same seed) for the pieces hashed since
    const refresh = async (sig: AbortSignal) => {
      const got = await p2p.fileTable(req.digest, query, MAX_TABLE_BYTES, sig);
      if (got.seed !== seed) throw new DfError('FAILED_PRECONDITION', 'another seed answered');
      return decodeTable(got.table, req.digest);
    };
    e.done = this.fill(
      e,
      table,
      [p2p.peers, p2p.seedFor(seed), req.origin],
      table.filling ? refresh : undefined,
      p2p,
    );
    return e;
  }

  private add(digest: string, cache: BlobCache, source: Entry['source'], member?: SwarmMembership): Entry {
    const e: Entry = {
      digest,
      cache,
      source,
      refs: 0,
      member,
      done: Promise.resolve(),
      finished: source === 'cache',
      waiters: new Set(),
      abort: new AbortController(),
      bytes: {},
    };
    this.entries.set(digest, e);
    return e;
  }

  private async fill(
    e: Entry,
    table: PieceTable,
    sources: BlockSource[],
    refresh: ((signal: AbortSignal) => Promise<PieceTable>) | undefined,
    p2p: P2pNode,
  ): Promise<void> {
    const filling = table.filling === true;
    try {
      e.bytes = await fetchThroughSwarm(
        p2p,
        {
          table,
          cache: e.cache,
          sources,
          signal: e.abort.signal,
          refresh,
          concurrency: Math.min(8, Math.max(4, Math.floor(INFLIGHT_BYTES / table.pieceSize))),
          // what the planner left, for a blob the seed still fetches, is asked for in file order (nodes that
          // ask for the same piece at once are told to take it from the node it goes to)
          window: table.filling ? 1 : WINDOW,
          onPiece: (_u, n, from) => (this.bytes[from] = (this.bytes[from] ?? 0) + n),
        },
        (runs) => (e.runs = runs),
      );
      await e.cache.flush(e.abort.signal);
      const v = e.cache.verified ? { ok: true } : await e.cache.verifyComplete(e.abort.signal);
      if (!v.ok) throw DfError.digestMismatch(`blob from the cluster`, e.digest, v.actual ?? '?');
      this.log.debug({ digest: e.digest, bytes: e.bytes }, 'mirror: blob complete from the cluster');
    } catch (err) {
      e.failed = err;
      if (!e.abort.signal.aborted) this.log.warn({ err, digest: e.digest }, 'mirror: cluster fetch failed');
      // pieces checked against a table the seed was still filling: the registry's blob was not checked
      // whole yet, so they are not kept for a later fetch
      if (filling) await e.cache.drop().catch(() => undefined);
    } finally {
      e.finished = true;
      wake(e);
      // a failed blob is not reused: the next request starts again (what was verified stays in the cache)
      if (e.failed !== undefined && this.entries.get(e.digest) === e) {
        this.entries.delete(e.digest);
        if (e.refs === 0) void this.drop(e);
      }
    }
  }

  private async *read(e: Entry, start: number, end: number, signal: AbortSignal): AsyncGenerator<Buffer> {
    const layout = e.layout;
    for (let at = start; at < end;) {
      const u = layout ? Math.floor(at / layout.pieceSize) : 0;
      const unitEnd = layout ? Math.min(end, layout.offset(u) + layout.length(u)) : end;
      // a piece the reader waits on longer than URGENT_MS is fetched first (the planner takes any order)
      const since = Date.now();
      let asked = false;
      while (layout && !e.cache.has(u)) {
        if (e.finished) throw DfError.from(e.failed ?? DfError.internal(`piece ${u} of ${e.digest} missing`));
        signal.throwIfAborted();
        await new Promise<void>((r) => {
          const done = () => {
            clearTimeout(t);
            e.waiters.delete(done);
            signal.removeEventListener('abort', done);
            r();
          };
          const t = setTimeout(done, asked ? URGENT_AGAIN_MS : Math.max(0, since + URGENT_MS - Date.now()));
          e.waiters.add(done);
          signal.addEventListener('abort', done, { once: true });
        });
        if (!e.cache.has(u) && e.runs && Date.now() - since >= URGENT_MS) {
          asked = true;
          void e.runs.urgent(u, e.abort.signal);
        }
      }
      // at most 1 MiB per chunk: a reader holds one chunk at a time
      const n = Math.min(unitEnd - at, 1 << 20);
      yield await e.cache.read(at, n, signal);
      at += n;
    }
  }

  private idle(e: Entry): void {
    if (this.entries.get(e.digest) !== e) {
      void this.drop(e);
      return;
    }
    if (e.source === 'cache') {
      this.entries.delete(e.digest);
      void this.drop(e);
      return;
    }
    // serve the pieces to peers a while longer (they may be pulling the same image)
    e.linger = setTimeout(() => {
      if (e.refs > 0) return;
      this.entries.delete(e.digest);
      void this.drop(e);
    }, LINGER_MS);
    e.linger.unref();
  }

  private drop(e: Entry): Promise<void> {
    e.dropped ??= this.dropOnce(e);
    return e.dropped;
  }

  private async dropOnce(e: Entry): Promise<void> {
    if (e.linger) clearTimeout(e.linger);
    e.abort.abort(DfError.aborted('mirror blob released'));
    await e.done.catch(() => undefined);
    e.removeListener?.();
    e.removeListener = undefined;
    const member = e.member;
    e.member = undefined;
    await member?.leave().catch(() => undefined);
    await this.opts.caches.release(e.cache).catch(() => undefined);
  }

  /**
   * Drops the blob that has lingered longest (no reader; kept open only to serve peers), so that a full
   * cache may evict it; false when none lingers.
   */
  async releaseLingering(): Promise<boolean> {
    for (const e of this.entries.values()) {
      if (e.refs > 0 || !e.linger) continue;
      this.entries.delete(e.digest);
      await this.drop(e);
      return true;
    }
    return false;
  }

  heldSize(digest: string): number | undefined {
    return this.opts.caches.list().find((b) => b.digest === digest && b.complete)?.size;
  }

  /** Stops every fetch and leaves every swarm (before the P2P node and the cache close). */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.allSettled([...this.opening.values()]);
    const all = [...this.entries.values()];
    this.entries.clear();
    await Promise.allSettled(all.map((e) => this.drop(e)));
  }
}

function wake(e: Entry): void {
  for (const w of [...e.waiters]) w();
}
