import type { Footer } from '../blob/footer.js';
import type { Toc } from '../blob/toc.js';
import type { BlobCache } from '../cache/blob-cache.js';
import { BackgroundFill } from '../fetch/background-fill.js';
import { BlobReader } from '../fetch/blob-reader.js';
import type { BlockMemoryCache } from '../fetch/block-memory-cache.js';
import { FetchScheduler } from '../fetch/scheduler.js';
import { FetchStats } from '../fetch/fetch-stats.js';
import { RangePrefetch } from '../fetch/range-prefetch.js';
import type { BlobRef, BlockSource } from '../fetch/types.js';
import { UnitFetcher } from '../fetch/unit-fetcher.js';
import { silentLogger, type Logger } from '../log.js';
import type { Timers } from '../util/timers.js';
import type { TokenBucket } from '../util/token-bucket.js';
import { loadToc, type LoadedToc } from './load-toc.js';
import type { LayerSwarm, SwarmMembership } from './swarm.js';

/** How a layer fetches, reads and fills (config `fetch.*` and `cache.verifyCachedReads`). */
export interface LayerOptions {
  /** A read resolves or rejects within this time (ms). Default 30 s. */
  readTimeoutMs?: number;
  /** Each range request is abandoned after this time (ms), plus time at the floor rate. Default 10 s. */
  requestTimeoutMs?: number;
  /** Further attempts after a failed request or a bad block. Default 3. */
  retries?: number;
  /** Retry backoff base and cap (ms). Defaults 100 / 2000. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Largest range request (stored bytes) built from adjacent units. Default 4 MiB. */
  maxRunBytes?: number;
  /** Background fill rate limit in bytes/s (0 = unlimited); ignored when a fill bucket is given. */
  fillRateBytesPerSec?: number;
  /** Background fill runs in flight at once. Default 2. */
  fillConcurrency?: number;
  /** Pause after a fill pass that left units missing, before the next pass (ms). Default 5 s. */
  fillRetryMs?: number;
  /** Start background fill after the first read. Default true. */
  fillAfterFirstRead?: boolean;
  /** Fetch the TOC's prefetch ranges when the layer opens (blobs of format 1.1 that have them). Default true. */
  prefetchOnOpen?: boolean;
  /** Prefetch runs in flight at once. Default 2. */
  prefetchRuns?: number;
  /** Check the SHA-256 of blocks read from the disk cache. Default true. */
  verifyCachedReads?: boolean;
}

/** What every layer of a node (or a seed) shares. */
export interface LayerShared {
  memoryCache: BlockMemoryCache;
  stats?: FetchStats;
  /** One per node, so that fill anywhere yields to blocked reads anywhere. */
  scheduler?: FetchScheduler;
  /** Host-wide fill rate limit. */
  fillBucket?: TokenBucket;
  /** The P2P tier: the layer joins it once its TOC is verified. */
  swarm?: LayerSwarm;
  timers?: Timers;
  logger?: Logger;
  options?: LayerOptions;
}

export interface LayerCoreInit extends LayerShared {
  blob: BlobRef;
  /** Opened by the caller, who releases it after close(). */
  cache: BlobCache;
  /** Remote sources in order of preference (peers, seed, registry). */
  sources: BlockSource[];
  /** TOC digest from the converter's annotation; checked when given. */
  expectedTocDigest?: string;
  /** TOC offset from the converter's annotation (see LoadTocOptions.tocOffsetHint). */
  tocOffsetHint?: number;
  /**
   * The TOC loadToc verified over this same cache moments ago (LayerStore.readToc): taken as it is while the
   * cache still holds it, so the TOC is not read and decoded a second time.
   */
  loaded?: LoadedToc;
  signal?: AbortSignal;
}

/**
 * Everything one open DFB blob needs, built in one place: the verified TOC, the unit fetcher over the
 * source chain, the reader, background fill and the P2P membership. Only LayerStore (and tests of the
 * fetch path) build one; everyone else holds a Layer handle.
 */
export class LayerCore {
  private constructor(
    readonly blob: BlobRef,
    readonly toc: Toc,
    readonly footer: Footer,
    readonly tocSource: 'cache' | 'remote',
    readonly cache: BlobCache,
    readonly fetcher: UnitFetcher,
    readonly reader: BlobReader,
    readonly fill: BackgroundFill,
    readonly prefetch: RangePrefetch,
    private readonly membership: SwarmMembership | undefined,
    private readonly logger: Logger,
  ) {}

  /** Loads and verifies the TOC (cache first, then the sources), then builds the parts and joins the swarm. */
  static async open(init: LayerCoreInit): Promise<LayerCore> {
    const o = init.options ?? {};
    const logger = init.logger ?? silentLogger;
    init.swarm?.prepare?.(init.blob);
    const pre = init.loaded;
    const layout = init.cache.layout;
    const kept =
      pre &&
      layout?.blockCount === pre.toc.blockCount &&
      layout.tocOffset === pre.footer.tocOffset &&
      (pre.unstored !== undefined || init.cache.has(layout.blockCount));
    const loaded = kept
      ? pre
      : await loadToc({
          blob: init.blob,
          cache: init.cache,
          sources: init.sources,
          expectedTocDigest: init.expectedTocDigest,
          tocOffsetHint: init.tocOffsetHint,
          requestTimeoutMs: o.requestTimeoutMs,
          timers: init.timers,
          logger,
          signal: init.signal,
        });
    const fetcher = new UnitFetcher({
      blob: init.blob,
      toc: loaded.toc,
      cache: init.cache,
      sources: init.sources,
      stats: init.stats ?? new FetchStats(),
      tocUnitSha256: loaded.unitSha256,
      scheduler: init.scheduler ?? new FetchScheduler(),
      timers: init.timers,
      options: o,
    });
    const membership = init.swarm?.join({ blob: init.blob, toc: loaded.toc, cache: init.cache });
    const fill = new BackgroundFill({
      fetcher,
      bucket: init.fillBucket,
      planner: membership?.planner,
      tocUnit: loaded.unstored,
      tocAnchored: loaded.anchored,
      timers: init.timers,
      logger,
      options: {
        rateBytesPerSec: o.fillRateBytesPerSec,
        concurrency: o.fillConcurrency,
        retryMs: o.fillRetryMs,
      },
    });
    const fillOnRead = o.fillAfterFirstRead ?? true;
    const reader = new BlobReader({
      fetcher,
      memoryCache: init.memoryCache,
      onRead: fillOnRead ? () => fill.start() : undefined,
      timers: init.timers,
      logger,
      options: o,
    });
    // the blocks the container will read first, at Prefetch priority, while it starts
    const prefetch = new RangePrefetch({
      fetcher,
      ranges: loaded.toc.prefetchRanges,
      runs: o.prefetchRuns,
      logger,
    });
    if (o.prefetchOnOpen ?? true) prefetch.start();
    return new LayerCore(
      init.blob,
      loaded.toc,
      loaded.footer,
      loaded.source,
      init.cache,
      fetcher,
      reader,
      fill,
      prefetch,
      membership,
      logger,
    );
  }

  /** What the P2P fill planner did (absent without a P2P tier). */
  get fillCounters(): Readonly<Record<string, number>> | undefined {
    return this.membership?.fillCounters;
  }

  /**
   * Leaves the swarm (nothing serves or announces this blob any more), then stops fill and fetches and
   * flushes the cache's bitmap. The cache itself is the caller's to release afterwards.
   */
  async close(): Promise<void> {
    await this.membership
      ?.leave()
      .catch((err) => this.logger.warn({ err, digest: this.blob.digest }, 'leaving the swarm failed'));
    this.fetcher.close();
    await this.prefetch.done();
    await this.fill.close();
  }
}
