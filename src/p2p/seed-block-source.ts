import { SLOW_FILL_FACTOR, transferTimeoutMs } from '../util/transfer-timeout.js';
import { DfError } from '../errors.js';
import { stallSignal } from '../util/stall-signal.js';
import { realTimers, type Timers } from '../util/timers.js';
import {
  isBusy,
  isDeferred,
  isHandedBack,
  isSourceUnavailable,
  Priority,
  sourceUnavailable,
  type BlobRef,
  type BlockSource,
  type FetchContext,
} from '../fetch/types.js';
import type { OriginSwitch } from './hand-back.js';
import { bodyHold } from '../fetch/body-hold.js';
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
  /**
   * The node takes a planned run from the registry itself when the seed hands it back (its registry link is
   * full): planned requests say so (`origin=1`).
   */
  origin?: OriginSwitch;
  /** The seeds refused the cluster token (logged once: a configuration error, not a fault). */
  onUnauthorized?: (seed: string, message: string) => void;
}

/**
 * A seed that times out this many times in a row, with nothing heard from it meanwhile (no answer, no byte
 * of any response), counts as down (hung).
 */
const TIMEOUTS_UNTIL_DOWN = 3;

/**
 * The seed tier as a BlockSource: the blob's seed by rendezvous hashing, the next seed when it is down
 * or isolated. Sends the repository and blob size (never credentials) so that the seed can fetch a block
 * it misses from the registry with its own.
 *
 * Down (connection refused or reset, no connection within 10 s, an HTTP error, or three timeouts in a
 * row with nothing heard from the seed meanwhile) isolates the seed and moves on to the next one. Slow is
 * not down: a background-fill request that is receiving bytes is not cut at its time limit but when it
 * stalls (timeoutMs without a byte; SLOW_FILL_FACTOR times the limit at most), and a request that times
 * out while the seed is heard from (other responses arriving) does not count towards down. Background
 * fill gets such timeouts, and a seed's "busy" (429, or 503 with Retry-After), back as they are: it waits
 * for the seed (so that the cluster does not go back to the registry because one link is saturated). A
 * reader that is blocked goes on to the registry at once (the read's time budget comes first). A seed that
 * refuses the cluster token is skipped like a seed that is down, so that a misconfigured node still works
 * from the registry.
 */
export class SeedBlockSource implements BlockSource {
  readonly kind = 'seed' as const;
  readonly name: string;
  private readonly servedBy = new WeakMap<Buffer, { seed: string; offset: number }>();
  private readonly timers: Timers;
  private readonly timeouts = new Map<string, number>();
  /** When each seed was last heard from (an answer's head or a chunk of a body). */
  private readonly heard = new Map<string, number>();

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
    let busy: DfError | undefined;
    const fill = (ctx?.priority ?? Priority.Blocked) === Priority.Fill;
    for (const seed of rankSeeds(blob.digest, this.opts.seeds)) {
      if (this.opts.isolation.isolated(seed)) continue;
      const limit = transferTimeoutMs(this.opts.timeoutMs, length);
      const started = this.timers.now();
      const rq = stallSignal(signal, {
        firstMs: limit,
        idleMs: this.opts.timeoutMs,
        // a blocked read keeps its fixed limit
        maxMs: fill ? limit * SLOW_FILL_FACTOR : limit,
        timers: this.timers,
        what: `seed ${seed}`,
      });
      const alive = () => {
        rq.alive();
        this.heard.set(seed, this.timers.now());
      };
      try {
        const planned = ctx?.planned === true && fill;
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
            ...(planned && this.opts.origin?.on ? { origin: '1' } : {}),
          },
          {
            progress: ctx?.progress,
            pieceDigest: ctx?.pieceDigest,
            alive,
            ...bodyHold(ctx, this.opts.timeoutMs),
          },
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
        // the seed's registry link is full: the planner takes them from the registry (claimed for this node)
        if (isHandedBack(e)) {
          this.opts.fallback?.note(blob.digest, offset, length, 'seed_handed_back');
          throw e;
        }
        // the seed's origin sent another file than the digest: nobody has it (the seed is not at fault)
        if (e.code === 'DIGEST_MISMATCH') throw e;
        lastErr = e;
        if (e.code === 'UNAUTHORIZED') {
          this.opts.onUnauthorized?.(seed, e.message);
          continue;
        }
        // alive but at its limit (upload, response budget, files fetched at once): asked again later
        if (isBusy(e)) {
          busy ??= e;
          continue;
        }
        // the seed answered but has nothing for this (refuses the registry, range over its limit): not down
        if (isSourceUnavailable(e)) continue;
        if (e.code === 'TIMEOUT') {
          // heard from since this request started (this or another response): slow, not hung
          const slow = (this.heard.get(seed) ?? -Infinity) >= started;
          const n = slow ? 0 : (this.timeouts.get(seed) ?? 0) + 1;
          if (slow) this.timeouts.delete(seed);
          else this.timeouts.set(seed, n);
          if (n < TIMEOUTS_UNTIL_DOWN) {
            // busy, not down: fill waits for it (the fetcher retries later); a blocked read moves on
            if (fill) throw e;
            this.opts.fallback?.note(blob.digest, offset, length, 'seed_timeout');
            throw sourceUnavailable(`seed ${seed}: ${e.message}`);
          }
          this.timeouts.delete(seed);
        }
        this.opts.isolation.fail(seed, `${e.code}: ${e.message.slice(0, 300)}`);
      } finally {
        rq.dispose();
      }
    }
    if (busy) {
      // fill waits for a busy seed; a blocked read goes on to the registry
      if (fill) throw busy;
      this.opts.fallback?.note(blob.digest, offset, length, 'seed_busy');
      throw sourceUnavailable(busy.message);
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
