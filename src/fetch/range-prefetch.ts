import type { PrefetchRange } from '../blob/toc.js';
import { silentLogger, type Logger } from '../log.js';
import { Priority } from './types.js';
import type { UnitFetcher } from './unit-fetcher.js';

export interface RangePrefetchInit {
  fetcher: UnitFetcher;
  /** Stream ranges (the TOC's prefetch ranges: sorted, disjoint). */
  ranges: readonly PrefetchRange[];
  /** Runs in flight at once. Default 2: the other scheduler slots stay free for on-demand reads. */
  runs?: number;
  logger?: Logger;
}

/**
 * Mount-time prefetch of a layer's prefetch ranges (docs/format.md §6.1a): fetches the blocks under them,
 * in stream order (the access order dfconvert laid out), as runs of adjacent blocks of up to maxRunBytes at
 * Prefetch priority, a few at a time. On-demand reads (Blocked) queue ahead of the runs that have not
 * started, and a read of a block a queued run holds promotes that run. Stops when the fetcher closes (the
 * layer is released). Bytes it moved are counted in FetchStats.prefetchBytes.
 */
export class RangePrefetch {
  private readonly fetcher: UnitFetcher;
  private readonly ranges: readonly PrefetchRange[];
  private readonly runs: number;
  private readonly logger: Logger;
  private loop: Promise<void> | undefined;

  constructor(init: RangePrefetchInit) {
    this.fetcher = init.fetcher;
    this.ranges = init.ranges;
    this.runs = Math.max(1, init.runs ?? 2);
    this.logger = init.logger ?? silentLogger;
  }

  /** Starts (idempotent); nothing happens without ranges or when the blob is cached already. */
  start(): void {
    if (this.loop || !this.ranges.length || this.fetcher.closed || this.fetcher.cache.isComplete) return;
    this.loop = this.run().catch((err) => {
      if (!this.fetcher.closed)
        this.logger.warn({ err, digest: this.fetcher.blob.digest }, 'prefetch stopped');
    });
  }

  /** Resolves when the prefetch has ended (done, failed or stopped by close). */
  async done(): Promise<void> {
    await this.loop;
  }

  /** The blocks under the ranges, ascending, each once. */
  private blocks(): number[] {
    const toc = this.fetcher.toc;
    const out: number[] = [];
    for (const r of this.ranges) {
      const [a, b] = toc.blocksForRange(r.offset, r.length);
      for (let u = Math.max(a, (out[out.length - 1] ?? -1) + 1); u <= b; u++) out.push(u);
    }
    return out;
  }

  private async run(): Promise<void> {
    const fetcher = this.fetcher;
    const cache = fetcher.cache;
    const signal = fetcher.signal;
    const blocks = this.blocks();
    let next = 0;
    const span = (u: number) => fetcher.unitOffset(u + 1) - fetcher.unitOffset(u);
    /** The next run: adjacent blocks neither cached nor being fetched, at most maxRunBytes. */
    const nextRun = (): number[] => {
      while (next < blocks.length && (cache.has(blocks[next]!) || fetcher.inFlight(blocks[next]!))) next++;
      const run: number[] = [];
      let bytes = 0;
      while (next < blocks.length) {
        const u = blocks[next]!;
        if (cache.has(u) || fetcher.inFlight(u)) break;
        if (run.length && (u !== run[run.length - 1]! + 1 || bytes + span(u) > fetcher.maxRunBytes)) break;
        run.push(u);
        bytes += span(u);
        next++;
      }
      return run;
    };
    let onAbort!: () => void;
    const stopped = new Promise<undefined>((resolve) => (onAbort = () => resolve(undefined)));
    signal.addEventListener('abort', onAbort, { once: true });
    const worker = async () => {
      while (!signal.aborted) {
        const run = nextRun();
        if (!run.length) return;
        const settled = Promise.allSettled(fetcher.ensure(run, Priority.Prefetch));
        // closing the layer ends the wait at once (the run itself settles when its task sees the abort)
        const res = await Promise.race([settled, stopped]);
        if (!res) return;
        for (let i = 0; i < res.length; i++) {
          const r = res[i]!;
          if (r.status === 'fulfilled') fetcher.stats.prefetchBytes += r.value.length;
        }
      }
    };
    try {
      await Promise.all(Array.from({ length: this.runs }, worker));
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }
}
