import { setMaxListeners } from 'node:events';
import type { Toc } from '../blob/toc.js';
import type { BlobCache } from '../cache/blob-cache.js';
import { DfError } from '../errors.js';
import { adjacentGroups } from '../util/adjacent-groups.js';
import { groupSpan, RunWriter, type VerifiedUnit } from './run-writer.js';
import { checkStoredUnit } from './unit-check.js';
import { backoff } from '../util/backoff.js';
import { bound, childSignal, realTimers, sleep, type Timers } from '../util/timers.js';
import { transferTimeoutMs } from '../util/transfer-timeout.js';
import type { FetchScheduler, ScheduledTask } from './scheduler.js';
import type { FetchStats } from './fetch-stats.js';
import {
  isPlannerAnswer,
  isSourceUnavailable,
  Priority,
  type BlobRef,
  type BlockSource,
  type SourceKind,
} from './types.js';

export interface UnitFetcherOptions {
  /** Each range request is abandoned after this time (ms), plus time at the floor rate. Default 10 s. */
  requestTimeoutMs?: number;
  /** Further attempts after a failed request or a bad block; attempt k uses source k mod n. Default 3. */
  retries?: number;
  /** Backoff before attempt k+1: min(retryMaxMs, retryBaseMs * 2^k) with full jitter. Defaults 100 / 2000 ms. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Largest range request (stored bytes) built from adjacent units. Default 4 MiB. */
  maxRunBytes?: number;
}

export interface UnitFetcherInit {
  blob: BlobRef;
  toc: Toc;
  cache: BlobCache;
  /** Remote sources in order of preference (peers, seed, registry). */
  sources: BlockSource[];
  stats: FetchStats;
  /**
   * SHA-256 of the verified TOC unit (TOC + footer). A copy of the TOC unit from a source is then checked by
   * its hash before anything is inflated; without it the copy is decoded and compared with the TOC.
   */
  tocUnitSha256?: Buffer;
  /** Shared by all fetchers of a node, so that fill anywhere yields to blocked reads anywhere. */
  scheduler: FetchScheduler;
  timers?: Timers;
  options?: UnitFetcherOptions;
}

/** Options of units() and ensure(). */
export interface UnitsOptions {
  /** Only sources of these kinds (a planner that chose where a run comes from); else the whole chain. */
  only?: readonly SourceKind[];
  /**
   * ensure() only: cancels the runs this call starts (read-ahead that nobody waits for any more). A run a
   * more urgent reader has joined goes on; the others are dropped from the queue or their request aborted,
   * and their units' promises reject (the units are fetched again when someone asks).
   */
  signal?: AbortSignal;
  /** No reader waits on these units (a seed: a node's planned run), whatever the priority: FetchContext.bulk. */
  bulk?: boolean;
}

/** A run of units fetched by one task; its priority rises when a more urgent reader joins it. */
interface RunState {
  priority: Priority;
  only?: readonly SourceKind[];
  /** Nobody is blocked on it (FetchContext.bulk): fill, or UnitsOptions.bulk, until a reader joins it. */
  bulk: boolean;
  /** The run's own abort (a cancellable run): follows close() and the caller's cancellation. */
  signal?: AbortSignal;
  /** Stops the source in flight holding the run's bytes back (FetchContext.onHurry). */
  hurry?: () => void;
}

interface InFlight {
  promise: Promise<Buffer>;
  /** Settles `promise`: only its own run may (a late write of a run given up must not settle a new one). */
  waiter: Waiter;
  task?: ScheduledTask<void>;
  run?: RunState;
}

interface Waiter {
  unit: number;
  resolve: (b: Buffer) => void;
  reject: (e: unknown) => void;
}

function rotate<T>(items: readonly T[], k: number): T[] {
  if (!items.length) return [];
  const i = k % items.length;
  return [...items.slice(i), ...items.slice(0, i)];
}

/**
 * Moves verified units of one blob (its blocks, then the TOC unit [tocOffset, size)) from the source chain
 * into the cache. Concurrent requests for a unit share one fetch; missing adjacent units go out as one range
 * request of at most maxRunBytes, scheduled at the priority of the most urgent waiter; a failed request or a
 * unit that fails verification is retried on the next source. Nothing unverified reaches the cache or a
 * caller. The reader, the background fill and the P2P tier (seeds, fill planner) all move units through it.
 */
export class UnitFetcher {
  readonly blob: BlobRef;
  readonly toc: Toc;
  readonly cache: BlobCache;
  readonly stats: FetchStats;
  private readonly sources: BlockSource[];
  private readonly tocUnitSha256: Buffer | undefined;
  private readonly scheduler: FetchScheduler;
  private readonly timers: Timers;
  private readonly inflight = new Map<number, InFlight>();
  private readonly closer = new AbortController();
  private readonly opts: Required<UnitFetcherOptions>;

  constructor(init: UnitFetcherInit) {
    // every request in flight listens to it (and stops listening when done): many at once is normal
    setMaxListeners(0, this.closer.signal);
    this.blob = init.blob;
    this.toc = init.toc;
    this.cache = init.cache;
    this.sources = init.sources;
    this.stats = init.stats;
    this.tocUnitSha256 = init.tocUnitSha256;
    this.scheduler = init.scheduler;
    this.timers = init.timers ?? realTimers;
    const o = init.options ?? {};
    this.opts = {
      requestTimeoutMs: o.requestTimeoutMs ?? 10_000,
      retries: o.retries ?? 3,
      retryBaseMs: o.retryBaseMs ?? 100,
      retryMaxMs: o.retryMaxMs ?? 2000,
      maxRunBytes: o.maxRunBytes ?? 4 * 1024 * 1024,
    };
    if (this.cache.unitCount !== this.toc.blockCount + 1) {
      throw DfError.internal(`fetcher ${this.blob.digest}: cache layout does not match the TOC`);
    }
  }

  /** The TOC unit's number: units are the blocks, then the TOC with the footer. */
  get tocUnit(): number {
    return this.toc.blockCount;
  }

  get maxRunBytes(): number {
    return this.opts.maxRunBytes;
  }

  /** Aborted at close(): every request and every loop over this blob's units stops. */
  get signal(): AbortSignal {
    return this.closer.signal;
  }

  get closed(): boolean {
    return this.closer.signal.aborted;
  }

  /** Blob offset of unit u (u = unit count: the blob size). */
  unitOffset(u: number): number {
    return u <= this.toc.blockCount ? this.toc.blockOffset(u) : this.blob.size;
  }

  /** Units being fetched now (queued or in flight). */
  get inFlightCount(): number {
    return this.inflight.size;
  }

  /** Whether unit u is being fetched now. */
  inFlight(u: number): boolean {
    return this.inflight.has(u);
  }

  /** Settles when every fetch in flight now has settled. */
  async settled(): Promise<void> {
    if (this.inflight.size) await Promise.allSettled([...this.inflight.values()].map((f) => f.promise));
  }

  /** For fill: waits for its next run's turn (FetchScheduler.fillTurn); returns its size (≤ `maxRunBytes`). */
  fillTurn(maxRunBytes: number, signal?: AbortSignal): Promise<number> {
    return this.scheduler.fillTurn(Math.min(maxRunBytes, this.opts.maxRunBytes), signal);
  }

  /**
   * Verified stored bytes of units (blocks, or the TOC unit), from the cache or fetched at `priority`
   * (coalesced with any fetch of them in flight). For seeds and P2P fill, which move units.
   */
  async units(
    units: number[],
    priority: Priority,
    signal?: AbortSignal,
    opts: UnitsOptions = {},
  ): Promise<Buffer[]> {
    return bound(Promise.all(this.unitParts(units, priority, signal, opts)), { signal, what: 'units' });
  }

  /**
   * units(), one promise per unit in order: each settles as soon as its unit is read from the cache or
   * verified off the wire, so that a seed can forward the first blocks of a run before the last arrive.
   */
  unitParts(
    units: number[],
    priority: Priority,
    signal?: AbortSignal,
    opts: UnitsOptions = {},
  ): Promise<Buffer>[] {
    const out: Promise<Buffer>[] = new Array(units.length);
    const missing: number[] = [];
    const at: number[] = [];
    const present = (u: number) => this.cache.has(u) && !this.inflight.has(u);
    for (let k = 0; k < units.length; k++) {
      const u = units[k]!;
      if (!Number.isSafeInteger(u) || u < 0 || u > this.tocUnit)
        throw DfError.invalidArgument(`unit ${u} out of range`);
      if (!present(u)) {
        missing.push(u);
        at.push(k);
        continue;
      }
      // adjacent units in the cache: one read, split
      let last = k;
      while (last + 1 < units.length && units[last + 1] === units[last]! + 1 && present(units[last + 1]!))
        last++;
      const off = this.unitOffset(u);
      const end = this.unitOffset(units[last]! + 1);
      const read = this.cache.read(off, end - off, signal);
      for (let i = k; i <= last; i++) {
        const rel = this.unitOffset(units[i]!) - off;
        const relEnd = this.unitOffset(units[i]! + 1) - off;
        out[i] = read.then((b) => b.subarray(rel, relEnd));
      }
      k = last;
    }
    const fetched = missing.length ? this.ensure(missing, priority, opts) : [];
    for (let j = 0; j < fetched.length; j++) out[at[j]!] = fetched[j]!;
    for (const p of out) p.catch(() => {});
    return out;
  }

  /**
   * Fetches units that are not present yet at `priority` (on behalf of whoever needs them). Returns one
   * promise of verified stored bytes per unit, in order. Units already in flight are shared (and their task
   * promoted); the rest go out as runs of adjacent units of at most maxRunBytes.
   */
  ensure(units: number[], priority: Priority, opts: UnitsOptions = {}): Promise<Buffer>[] {
    const out: Promise<Buffer>[] = new Array(units.length);
    const cancel = opts.signal;
    if (cancel?.aborted) {
      const e = DfError.aborted('fetch cancelled');
      return units.map(() => Promise.reject(e));
    }
    let run: Waiter[] = [];
    let runBytes = 0;
    const bulk = priority === Priority.Fill || opts.bulk === true;
    const flush = () => {
      if (run.length) this.startRun(run, { priority, only: opts.only, bulk }, cancel);
      run = [];
      runBytes = 0;
    };
    for (let k = 0; k < units.length; k++) {
      const u = units[k]!;
      const f = this.inflight.get(u);
      if (f) {
        f.task?.promote(priority);
        if (f.run && priority < f.run.priority) {
          // a reader is waiting on it now (more urgent than fill): the whole chain may serve it
          f.run.priority = priority;
          f.run.only = undefined;
          f.run.hurry?.();
        }
        if (f.run && !opts.bulk && priority !== Priority.Fill) f.run.bulk = false;
        out[k] = f.promise;
        flush();
        continue;
      }
      const len = this.unitOffset(u + 1) - this.unitOffset(u);
      const prev = run[run.length - 1];
      if (prev && (prev.unit !== u - 1 || runBytes + len > this.opts.maxRunBytes)) flush();
      let waiter!: Waiter;
      const promise = new Promise<Buffer>((resolve, reject) => (waiter = { unit: u, resolve, reject }));
      promise.catch(() => {});
      this.inflight.set(u, { promise, waiter });
      out[k] = promise;
      run.push(waiter);
      runBytes += len;
    }
    flush();
    return out;
  }

  /** Stops in-flight fetches and whatever waits on this blob's signal. */
  close(): void {
    if (!this.closer.signal.aborted) this.closer.abort(DfError.aborted(`layer ${this.blob.digest} closed`));
  }

  private startRun(run: Waiter[], state: RunState, cancel?: AbortSignal): void {
    const ac = cancel ? new AbortController() : undefined;
    if (ac) state.signal = AbortSignal.any([this.closer.signal, ac.signal]);
    const task = this.scheduler.schedule(state.priority, () => this.fetchRun(run, state));
    if (cancel && ac) {
      const origin = state.priority;
      const onCancel = () => {
        if (state.priority < origin) return; // a more urgent reader joined: it goes on
        const e = DfError.aborted('fetch cancelled');
        if (!task.cancel(e)) ac.abort(e);
      };
      cancel.addEventListener('abort', onCancel, { once: true });
      void task.promise.catch(() => {}).finally(() => cancel.removeEventListener('abort', onCancel));
    }
    for (const w of run) {
      const f = this.inflight.get(w.unit);
      if (!f) continue;
      f.task = task;
      f.run = state;
    }
    task.promise.catch((err) => {
      for (const w of run) this.settle(w, err);
    });
  }

  private settle(w: Waiter, result: Buffer | unknown): void {
    if (this.inflight.get(w.unit)?.waiter !== w) return;
    this.inflight.delete(w.unit);
    if (Buffer.isBuffer(result)) w.resolve(result);
    else w.reject(result);
  }

  /**
   * The sources to try, in order, for attempt `attempt` of a run: the chain rotated by the attempt (a
   * failed source is not asked first again). Background fill rotates over the P2P sources only and puts
   * the registry last, so that it is reached only when every P2P source has nothing (no seed is up) — a
   * slow seed is waited for, not bypassed; reads rotate over the whole chain.
   */
  private chainFor(attempt: number, state: RunState): BlockSource[] {
    let all = this.sources;
    const only = state.only;
    if (only) all = all.filter((s) => only.includes(s.kind));
    if (state.priority !== Priority.Fill) return rotate(all, attempt);
    const p2p = all.filter((s) => s.kind !== 'registry');
    return [...rotate(p2p, attempt), ...all.filter((s) => s.kind === 'registry')];
  }

  /** Fetches a run of units, retrying failed requests and bad units (next attempt uses the next source). */
  private async fetchRun(run: Waiter[], state: RunState): Promise<void> {
    let todo = run;
    let lastErr: unknown;
    if (this.sources.length === 0) lastErr = DfError.notFound(`no source for blob ${this.blob.digest}`);
    for (let attempt = 0; this.sources.length > 0 && attempt <= this.opts.retries && todo.length; attempt++) {
      if (attempt > 0) {
        this.stats.refetches += todo.length;
        const ms = backoff(attempt - 1, this.opts.retryBaseMs, this.opts.retryMaxMs);
        await sleep(this.timers, ms, state.signal ?? this.closer.signal);
      }
      (state.signal ?? this.closer.signal).throwIfAborted();
      const chain = this.chainFor(attempt, state);
      const head = chain[0];
      if (!head) {
        lastErr ??= DfError.notFound(`no ${state.only?.join('/')} source for blob ${this.blob.digest}`);
        break;
      }
      const next: Waiter[] = [];
      // todo may have holes after failures: one request per contiguous part
      for (const part of adjacentGroups(todo, (w) => w.unit)) {
        let err = await this.fetchPart(head, part, next, state);
        // a source with nothing for this part (no peer holds it): the next sources, at once
        for (let s = 1; s < chain.length && isSourceUnavailable(err) && next.length; s++) {
          const again = next.splice(next.length - part.length);
          err = await this.fetchPart(chain[s]!, again, next, state);
        }
        if (err) lastErr = err;
      }
      todo = next;
      // deferred, handed back, or the holder's upload slots are taken: the run's planner decides, no retries
      if (isPlannerAnswer(lastErr) && state.priority === Priority.Fill) break;
    }
    if (!todo.length) return;
    const e = DfError.from(lastErr ?? DfError.internal('fetch gave up'), `fetch ${this.blob.digest}`);
    for (const w of todo) this.settle(w, e);
  }

  /**
   * One range request for adjacent units; units to try again are pushed to `retry`. Returns the last error.
   * Units are verified as their bytes arrive (when the source tells of progress): a unit verified while
   * the rest of the run is still on its way goes to its waiters at once, and into the cache with the units
   * verified around it (RunWriter); its entry stays in flight until it is stored, so nobody fetches it again
   * meanwhile.
   */
  private async fetchPart(
    source: BlockSource,
    part: Waiter[],
    retry: Waiter[],
    state: RunState,
  ): Promise<unknown> {
    const off = this.unitOffset(part[0]!.unit);
    const len = this.unitOffset(part[part.length - 1]!.unit + 1) - off;
    const what = `${source.name}: ${this.blob.digest} bytes ${off}+${len}`;
    // the limit grows with the size: a large run on a thin, shared link is slow, not failed
    const ms = transferTimeoutMs(this.opts.requestTimeoutMs, len);
    const runSignal = state.signal ?? this.closer.signal;
    const rq = childSignal(runSignal, ms, this.timers, what);
    const t0 = this.timers.now();
    let lastErr: unknown;
    const writer = new RunWriter<Waiter>(async (group) => {
      const err = await this.storeGroup(group, source);
      if (err !== undefined) lastErr = err;
    }, this.timers);
    let next = 0;
    // bad units, told to the source once it has returned its buffer (it knows who served that buffer)
    const bad: [number, number][] = [];
    const check = (data: Buffer, filled: number) => {
      for (; next < part.length; next++) {
        const w = part[next]!;
        const unitOff = this.unitOffset(w.unit);
        const end = this.unitOffset(w.unit + 1) - off;
        if (end > filled) break;
        const stored = data.subarray(unitOff - off, end);
        try {
          checkStoredUnit(this.blob, this.toc, this.tocUnitSha256, w.unit, stored);
          writer.add({ waiter: w, unitOff, stored });
          // mid-transfer: its readers need not wait for the rest of the run (it is stored with the run)
          if (filled < len) w.resolve(stored);
        } catch (err) {
          this.stats.recordVerifyFailure(source.kind);
          bad.push([unitOff - off, stored.length]);
          retry.push(w);
          lastErr = err;
        }
      }
      if (filled < len) writer.nudge();
    };
    try {
      const ctx = {
        priority: state.priority,
        planned: state.only !== undefined,
        waitedOn: () => state.priority !== Priority.Fill,
        onHurry: (hurry: () => void) => (state.hurry = hurry),
        bulk: state.bulk,
        progress: check,
      };
      const data = await bound(source.fetch(this.blob, off, len, rq.signal, ctx), {
        signal: rq.signal,
        what,
      });
      if (data.length !== len) throw new DfError('NETWORK', `${what}: got ${data.length} bytes`);
      check(data, len);
      for (const [at, n] of bad) source.badBlock?.(this.blob, data, at, n);
      this.stats.recordFetch(source.kind, this.timers.now() - t0, true);
    } catch (err) {
      if (!isSourceUnavailable(err)) this.stats.recordFetch(source.kind, this.timers.now() - t0, false);
      if (runSignal.aborted) {
        // what arrived verified is kept (written now: nothing of this run outlives it)
        await writer.flush();
        throw err;
      }
      // what arrived verified is kept; the rest goes again
      retry.push(...part.slice(next));
      next = part.length;
      lastErr = err;
    } finally {
      state.hurry = undefined;
      rq.dispose();
    }
    // the verified units not written yet (and the writes in flight)
    await writer.flush();
    return lastErr;
  }

  /** Writes adjacent verified units in one write and settles their waiters; returns a write's error. */
  private async storeGroup(group: VerifiedUnit<Waiter>[], source: BlockSource): Promise<unknown> {
    const first = group[0]!;
    const units = group.map((g) => ({ unit: g.waiter.unit, length: g.stored.length }));
    try {
      await this.cache.writeUnits(units, first.unitOff, groupSpan(group), this.closer.signal);
    } catch (err) {
      if (this.closer.signal.aborted) {
        for (const g of group) this.settle(g.waiter, DfError.from(err, `cache ${this.blob.digest}`));
        return err;
      }
      // verified but not storable (NO_SPACE, ...): the waiters got the verified bytes all the same; the
      // cache does not claim them (its bitmap is unchanged) and the background fill tries them again
    }
    for (const g of group) {
      this.stats.served(source.kind, 1, g.stored.length);
      this.settle(g.waiter, g.stored);
    }
    return undefined;
  }
}
