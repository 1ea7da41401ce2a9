import { transferTimeoutMs } from '../util/transfer-timeout.js';
import { DfError } from '../errors.js';
import { childSignal, realTimers, type Timers } from '../util/timers.js';
import {
  isDeferred,
  isSourceUnavailable,
  Priority,
  sourceUnavailable,
  type BlobRef,
  type BlockSource,
  type FetchContext,
} from '../fetch/types.js';
import type { HttpBlockClient } from './http-block-client.js';
import type { Isolation } from './isolation.js';
import type { RegistryFallback } from './registry-fallback.js';
import { rankSeeds } from './rendezvous.js';

export interface SeedSourceOptions {
  seeds: readonly string[];
  /** `registry/repository` the seed fetches the blob from when it misses it. */
  repo: string;
  http: HttpBlockClient;
  /** Shared with the tracker client: a seed that is down is skipped by both. */
  isolation: Isolation;
  timeoutMs: number;
  timers?: Timers;
  /** Told why a range goes on to the registry (seed down, timeout, bad block): metrics. */
  fallback?: RegistryFallback;
  /** The seeds refused the cluster token (logged once: a configuration error, not a fault). */
  onUnauthorized?: (seed: string, message: string) => void;
}

/** A seed that times out this many times in a row, with no answer between, counts as down (hung). */
const TIMEOUTS_UNTIL_DOWN = 3;

/**
 * The seed tier as a BlockSource: the blob's seed by rendezvous hashing, the next seed when it is down
 * or isolated. Sends the repository and blob size (never credentials) so that the seed can fetch a block
 * it misses from the registry with its own.
 *
 * Down (connection refused or reset, no connection within 10 s, an HTTP error, or three timeouts in a
 * row) isolates the seed and moves on to the next one. Slow is not down: a request that times out on a
 * busy seed is retried there later when it is background fill (so that the cluster does not go back to
 * the registry because one link is saturated), and goes on to the registry at once when a reader is
 * blocked on it (the read's time budget comes first). A seed that refuses the cluster token is skipped
 * like a seed that is down, so that a misconfigured node still works from the registry.
 */
export class SeedBlockSource implements BlockSource {
  readonly kind = 'seed' as const;
  readonly name: string;
  private readonly servedBy = new WeakMap<Buffer, { seed: string; offset: number }>();
  private readonly timers: Timers;
  private readonly timeouts = new Map<string, number>();

  constructor(private readonly opts: SeedSourceOptions) {
    this.name = `seeds of ${opts.repo}`;
    this.timers = opts.timers ?? realTimers;
  }

  async fetch(
    blob: BlobRef,
    offset: number,
    length: number,
    signal: AbortSignal,
    ctx?: FetchContext,
  ): Promise<Buffer> {
    let lastErr: unknown = sourceUnavailable(`no seed is up for ${blob.digest}`);
    for (const seed of rankSeeds(blob.digest, this.opts.seeds)) {
      if (this.opts.isolation.isolated(seed)) continue;
      const rq = childSignal(
        signal,
        transferTimeoutMs(this.opts.timeoutMs, length),
        this.timers,
        `seed ${seed}`,
      );
      try {
        const planned = ctx?.planned === true && ctx.priority === Priority.Fill;
        const data = await this.opts.http.get(
          seed,
          blob.digest,
          offset,
          length,
          rq.signal,
          {
            repo: this.opts.repo,
            size: String(blob.size),
            ...(planned ? { defer: '1' } : {}),
          },
          ctx?.progress,
          ctx?.pieceDigest,
        );
        this.opts.isolation.ok(seed);
        this.timeouts.delete(seed);
        this.servedBy.set(data, { seed, offset });
        this.opts.fallback?.clear(blob.digest, offset, length);
        return data;
      } catch (err) {
        if (signal.aborted) throw err;
        const e = DfError.from(err);
        // the seed is sending these units to another node: the planner takes them from there
        if (isDeferred(e)) throw e;
        // the seed's origin sent another file than the digest: nobody has it (the seed is not at fault)
        if (e.code === 'DIGEST_MISMATCH') throw e;
        lastErr = e;
        if (e.code === 'UNAUTHORIZED') {
          this.opts.onUnauthorized?.(seed, e.message);
          continue;
        }
        // the seed answered but has nothing for this (refuses the registry, range over its limit): not down
        if (isSourceUnavailable(e)) continue;
        if (e.code === 'TIMEOUT') {
          const n = (this.timeouts.get(seed) ?? 0) + 1;
          this.timeouts.set(seed, n);
          if (n < TIMEOUTS_UNTIL_DOWN) {
            // busy, not down: fill waits for it (the fetcher retries later); a blocked read moves on
            if ((ctx?.priority ?? Priority.Blocked) === Priority.Fill) throw e;
            this.opts.fallback?.note(blob.digest, offset, length, 'seed_timeout');
            throw sourceUnavailable(`seed ${seed}: ${e.message}`);
          }
          this.timeouts.delete(seed);
        }
        this.opts.isolation.fail(seed, e.code);
      } finally {
        rq.dispose();
      }
    }
    // every seed is down: the registry (next source) at once
    this.opts.fallback?.note(
      blob.digest,
      offset,
      length,
      DfError.from(lastErr).code === 'TIMEOUT' ? 'seed_timeout' : 'seed_down',
    );
    throw sourceUnavailable(DfError.from(lastErr).message);
  }

  badBlock(blob: BlobRef, data: Buffer, offset: number, length: number): void {
    const by = this.servedBy.get(data);
    if (!by) return;
    this.opts.fallback?.note(blob.digest, by.offset + offset, length, 'verification');
    this.opts.isolation.fail(by.seed, 'bad block');
  }
}
