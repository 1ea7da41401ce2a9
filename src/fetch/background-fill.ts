import { DfError, isDfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { backoff } from '../util/backoff.js';
import { realTimers, sleep, type Timers } from '../util/timers.js';
import { TokenBucket } from '../util/token-bucket.js';
import { Priority } from './types.js';
import type { UnitFetcher } from './unit-fetcher.js';

/**
 * Background fill's first pass (the P2P tier's rarest-first planner): fetches units through the unit
 * fetcher and returns when it has nothing more to do; the in-order fill then takes whatever is left, with
 * retries, and checks the blob digest.
 */
export type FillPlanner = (fetcher: UnitFetcher, signal: AbortSignal) => Promise<void>;

export interface BackgroundFillOptions {
  /** Rate limit in bytes/s (0 = unlimited); ignored when a bucket is given. */
  rateBytesPerSec?: number;
  /** Runs in flight at once. Default 2. */
  concurrency?: number;
  /** Pause after a pass that left units missing (errors), doubling up to 16×, at most 5 min. Default 5 s. */
  retryMs?: number;
}

export interface BackgroundFillInit {
  fetcher: UnitFetcher;
  /** Shared host-wide rate limit; by default one per fill from rateBytesPerSec. */
  bucket?: TokenBucket;
  planner?: FillPlanner;
  /** Verified TOC+footer bytes, to store when the cache could not take them at open. */
  tocUnit?: Buffer;
  /**
   * The TOC was checked against the layer's TOC digest annotation (LoadedToc.anchored): every unit in the
   * cache was verified against it when stored, so a complete cache is not hashed again against the blob
   * digest (a second read and SHA-256 pass over the whole layer). Without it (a seed's copy, a layer whose
   * descriptor has no annotation) the blob digest is the anchor and the complete file is checked.
   */
  tocAnchored?: boolean;
  timers?: Timers;
  logger?: Logger;
  options?: BackgroundFillOptions;
}

/**
 * Fills every missing unit of a blob into its cache at Fill priority — the planner's pass first, then in
 * order with retries — and then checks the complete cache file against the blob digest (unless every unit
 * was verified against an annotation-anchored TOC: tocAnchored). Once started it
 * stops only when the fetcher closes.
 */
export class BackgroundFill {
  private readonly fetcher: UnitFetcher;
  private readonly bucket: TokenBucket;
  private readonly planner: FillPlanner | undefined;
  private readonly timers: Timers;
  private readonly logger: Logger;
  private readonly concurrency: number;
  private readonly retryMs: number;
  private tocUnitBytes: Buffer | undefined;
  private readonly tocAnchored: boolean;
  private loop: Promise<void> | undefined;
  private readonly completion: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void };

  constructor(init: BackgroundFillInit) {
    this.fetcher = init.fetcher;
    this.planner = init.planner;
    this.tocUnitBytes = init.tocUnit;
    this.tocAnchored = init.tocAnchored === true;
    this.timers = init.timers ?? realTimers;
    this.logger = init.logger ?? silentLogger;
    const o = init.options ?? {};
    this.concurrency = Math.max(1, o.concurrency ?? 2);
    this.retryMs = o.retryMs ?? 5000;
    const rate = o.rateBytesPerSec ?? 0;
    this.bucket = init.bucket ?? new TokenBucket(rate, Math.max(rate, this.fetcher.maxRunBytes), this.timers);
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {});
    this.completion = { promise, resolve, reject };
    const cache = this.fetcher.cache;
    if (cache.isComplete && (cache.verified || this.tocAnchored)) resolve();
  }

  private get digest(): string {
    return this.fetcher.blob.digest;
  }

  /** Starts filling (idempotent). */
  start(): void {
    if (this.loop || this.fetcher.closed) return;
    this.loop = this.run().catch((err) => {
      if (!this.fetcher.closed) this.logger.error({ err, digest: this.digest }, 'background fill stopped');
      this.completion.reject(err);
    });
  }

  get started(): boolean {
    return this.loop !== undefined;
  }

  /**
   * Resolves when the whole blob is cached and its digest checked (or, tocAnchored, its last unit verified and
   * stored); rejects on a digest mismatch or close.
   */
  whenComplete(): Promise<void> {
    return this.completion.promise;
  }

  /** Waits for the loop to end after the fetcher closed; flushes the cache's bitmap. */
  async close(): Promise<void> {
    this.completion.reject(DfError.aborted(`layer ${this.digest} closed`));
    await this.loop;
    await this.fetcher.cache.flush().catch((err) => {
      if (!isDfError(err, 'ABORTED'))
        this.logger.warn({ err, digest: this.digest }, 'cache flush failed at close');
    });
  }

  private async run(): Promise<void> {
    const fetcher = this.fetcher;
    const cache = fetcher.cache;
    const signal = fetcher.signal;
    let failures = 0;
    if (this.planner && !cache.isComplete) {
      try {
        await this.planner(fetcher, signal);
      } catch (err) {
        signal.throwIfAborted();
        this.logger.warn({ err, digest: this.digest }, 'fill planner stopped; filling in order');
      }
    }
    while (!signal.aborted) {
      if (cache.isComplete) {
        await this.verifyComplete(signal);
        this.completion.resolve();
        return;
      }
      await this.storeTocUnit(signal);
      const failed = await this.pass(signal);
      // wait for units other readers have in flight before looking again
      await fetcher.settled();
      if (failed) {
        failures++;
        const ms = backoff(Math.min(failures - 1, 4), this.retryMs, 5 * 60_000, 'none');
        this.logger.warn(
          { digest: this.digest, retryMs: ms },
          'background fill: some blocks failed; retrying',
        );
        await sleep(this.timers, ms, signal);
      } else failures = 0;
    }
    signal.throwIfAborted();
  }

  private async verifyComplete(signal: AbortSignal): Promise<void> {
    const cache = this.fetcher.cache;
    if (cache.verified) return;
    await cache.flush(signal);
    if (this.tocAnchored) {
      this.fetcher.stats.completeByBlocks++;
      return;
    }
    const r = await cache.verifyComplete(signal);
    if (!r.ok) {
      this.fetcher.stats.completeMismatches++;
      throw DfError.digestMismatch(`cached blob ${this.digest}`, this.digest, r.actual ?? '?');
    }
    this.fetcher.stats.completeVerified++;
  }

  private async storeTocUnit(signal: AbortSignal): Promise<void> {
    const fetcher = this.fetcher;
    const unit = fetcher.tocUnit;
    if (!this.tocUnitBytes || fetcher.cache.has(unit)) return;
    await fetcher.cache
      .write(unit, fetcher.unitOffset(unit), this.tocUnitBytes, signal)
      .then(() => (this.tocUnitBytes = undefined))
      .catch(() => {});
  }

  /** One in-order pass over the missing units; true when some failed. */
  private async pass(signal: AbortSignal): Promise<boolean> {
    const fetcher = this.fetcher;
    const cache = fetcher.cache;
    const span = (a: number, b: number) => fetcher.unitOffset(b) - fetcher.unitOffset(a);
    let failed = false;
    let cursor = 0;
    let runLimit = fetcher.maxRunBytes;
    const nextRun = (): number[] | undefined => {
      let u = cache.nextMissing(cursor);
      while (u >= 0 && fetcher.inFlight(u)) u = cache.nextMissing(u + 1);
      if (u < 0) return undefined;
      const units = [u];
      let bytes = span(u, u + 1);
      for (let v = u + 1; v <= fetcher.tocUnit && !cache.has(v) && !fetcher.inFlight(v); v++) {
        const len = span(v, v + 1);
        if (bytes + len > runLimit) break;
        units.push(v);
        bytes += len;
      }
      cursor = u + units.length;
      return units;
    };
    const worker = async () => {
      for (;;) {
        // Wait for the scheduler's go-ahead (no on-demand reads waiting) and take the run size it allows
        // now, so that a run decided early does not go out at full size into a burst of reads.
        runLimit = await fetcher.fillTurn(fetcher.maxRunBytes, signal);
        const units = nextRun();
        if (!units || signal.aborted) break;
        await this.bucket.take(span(units[0]!, units[units.length - 1]! + 1), signal);
        // some units may have arrived (or started) while waiting for tokens
        const still = units.filter((u) => !cache.has(u));
        const res = await Promise.allSettled(fetcher.ensure(still, Priority.Fill));
        res.forEach((r, i) => {
          // a unit fetched but not stored (a full disk) counts as failed: the pass backs off
          if (r.status === 'fulfilled' && cache.has(still[i]!)) fetcher.stats.fillBytes += r.value.length;
          else failed = true;
        });
      }
    };
    await Promise.all(Array.from({ length: this.concurrency }, worker));
    return failed;
  }
}
