import { setMaxListeners } from 'node:events';
import { decodeFooter, FOOTER_SIZE } from '../blob/footer.js';
import { decodeStoredBlock } from '../blob/block-codec.js';
import { DfbReader } from '../blob/reader.js';
import type { Toc } from '../blob/toc.js';
import { EntryType } from '../blob/types.js';
import type { BlobCache } from '../cache/blob-cache.js';
import { DfError, isDfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { BlockMemoryCache } from './block-memory-cache.js';
import { FetchScheduler, type ScheduledTask } from './scheduler.js';
import { FetchStats } from './fetch-stats.js';
import { bound, childSignal, realTimers, sleep, type Timers } from '../util/timers.js';
import { TokenBucket } from '../util/token-bucket.js';
import { transferTimeoutMs } from '../util/transfer-timeout.js';
import {
  isDeferred,
  isSourceUnavailable,
  Priority,
  type BlobRef,
  type BlockSource,
  type FileReader,
  type SourceKind,
} from './types.js';

export interface BlobFetcherOptions {
  /** A read resolves or rejects within this time (ms). Default 30 s. */
  readTimeoutMs?: number;
  /** Each range request is abandoned after this time (ms). Default 10 s. */
  requestTimeoutMs?: number;
  /** Further attempts after a failed request or a bad block; attempt k uses source k mod n. Default 3. */
  retries?: number;
  /** Backoff before attempt k+1: min(retryMaxMs, retryBaseMs * 2^k) with full jitter. Defaults 100 / 2000 ms. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /** Largest range request (stored bytes) built from adjacent blocks. Default 4 MiB. */
  maxRunBytes?: number;
  /** Background fill rate limit in bytes/s (0 = unlimited); ignored when a fillBucket is given. */
  fillRateBytesPerSec?: number;
  /** Background fill runs in flight at once. Default 2. */
  fillConcurrency?: number;
  /** Pause after a fill pass that left blocks missing (errors), before the next pass (ms). Default 5 s. */
  fillRetryMs?: number;
  /** Start background fill on the first read. Default true. */
  fillAfterFirstRead?: boolean;
  /** Check the SHA-256 of blocks read from the disk cache (detects bit rot). Default true. */
  verifyCachedReads?: boolean;
}

export interface BlobFetcherInit {
  blob: BlobRef;
  toc: Toc;
  cache: BlobCache;
  /** Remote sources in order of preference (peers, seed, registry). */
  sources: BlockSource[];
  memoryCache: BlockMemoryCache;
  stats?: FetchStats;
  /** Shared by all fetchers of a node, so that fill anywhere yields to blocked reads anywhere. */
  scheduler?: FetchScheduler;
  /** Shared host-wide fill rate limit; by default one per fetcher from fillRateBytesPerSec. */
  fillBucket?: TokenBucket;
  /** Verified TOC+footer bytes, for the fill to store when the cache could not take them at open. */
  tocUnit?: Buffer;
  /**
   * Background fill's first pass (the P2P tier's rarest-first planner): fetches units through units() and
   * returns when it has nothing more to do; the fetcher's own in-order fill then takes whatever is left,
   * with retries, and checks the blob digest.
   */
  fillPlanner?: FillPlanner;
  timers?: Timers;
  logger?: Logger;
  options?: BlobFetcherOptions;
}

/** The first pass of background fill (see BlobFetcherInit.fillPlanner). */
export type FillPlanner = (fetcher: BlobFetcher, signal: AbortSignal) => Promise<void>;

/** Options of units(). */
export interface UnitsOptions {
  /** Only sources of these kinds (a planner that chose where a run comes from); else the whole chain. */
  only?: readonly SourceKind[];
}

/** A run of units fetched by one task; its priority rises when a more urgent reader joins it. */
interface RunState {
  priority: Priority;
  only?: readonly SourceKind[];
}

interface InFlight {
  promise: Promise<Buffer>;
  task?: ScheduledTask<void>;
  run?: RunState;
}

interface Deferred {
  unit: number;
  resolve: (b: Buffer) => void;
  reject: (e: unknown) => void;
}

function rotate<T>(a: readonly T[], k: number): T[] {
  if (!a.length) return [];
  const i = k % a.length;
  return [...a.slice(i), ...a.slice(0, i)];
}

/**
 * Serves file reads of one blob: memory LRU → disk cache → remote sources, verifying every block.
 * Missing blocks under a read are fetched at Blocked priority, adjacent ones in one range request;
 * concurrent requests for a block share one fetch. After the first read, the rest of the blob (blocks and
 * the TOC unit) is filled in the background at Fill priority, then the complete file is checked against
 * the blob digest.
 */
export class BlobFetcher implements FileReader {
  readonly blob: BlobRef;
  readonly toc: Toc;
  readonly cache: BlobCache;
  readonly stats: FetchStats;
  private readonly sources: BlockSource[];
  private readonly mem: BlockMemoryCache;
  private readonly memId: number;
  private readonly scheduler: FetchScheduler;
  private readonly bucket: TokenBucket;
  private readonly timers: Timers;
  private readonly logger: Logger;
  private tocUnitBytes: Buffer | undefined;
  private readonly planner: FillPlanner | undefined;
  private readonly inflight = new Map<number, InFlight>();
  private readonly closer = new AbortController();
  private fill: Promise<void> | undefined;
  private completion!: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void };
  private readonly o: Required<BlobFetcherOptions>;

  constructor(init: BlobFetcherInit) {
    // every request in flight listens to it (and stops listening when done): many at once is normal
    setMaxListeners(0, this.closer.signal);
    this.blob = init.blob;
    this.toc = init.toc;
    this.cache = init.cache;
    this.sources = init.sources;
    this.mem = init.memoryCache;
    this.memId = this.mem.blobId(init.blob.digest);
    this.stats = init.stats ?? new FetchStats();
    this.scheduler = init.scheduler ?? new FetchScheduler();
    this.timers = init.timers ?? realTimers;
    this.logger = init.logger ?? silentLogger;
    this.tocUnitBytes = init.tocUnit;
    this.planner = init.fillPlanner;
    const o = init.options ?? {};
    this.o = {
      readTimeoutMs: o.readTimeoutMs ?? 30_000,
      requestTimeoutMs: o.requestTimeoutMs ?? 10_000,
      retries: o.retries ?? 3,
      retryBaseMs: o.retryBaseMs ?? 100,
      retryMaxMs: o.retryMaxMs ?? 2000,
      maxRunBytes: o.maxRunBytes ?? 4 * 1024 * 1024,
      fillRateBytesPerSec: o.fillRateBytesPerSec ?? 0,
      fillConcurrency: Math.max(1, o.fillConcurrency ?? 2),
      fillRetryMs: o.fillRetryMs ?? 5000,
      fillAfterFirstRead: o.fillAfterFirstRead ?? true,
      verifyCachedReads: o.verifyCachedReads ?? true,
    };
    this.bucket =
      init.fillBucket ??
      new TokenBucket(
        this.o.fillRateBytesPerSec,
        Math.max(this.o.fillRateBytesPerSec, this.o.maxRunBytes),
        this.timers,
      );
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    promise.catch(() => {});
    this.completion = { promise, resolve, reject };
    if (this.cache.isComplete && this.cache.verified) resolve();
    if (this.cache.unitCount !== this.toc.blockCount + 1) {
      throw DfError.internal(`fetcher ${this.blob.digest}: cache layout does not match the TOC`);
    }
  }

  /** Units: blocks, then the TOC unit [tocOffset, size). */
  private get tocUnit(): number {
    return this.toc.blockCount;
  }
  private unitOffset(u: number): number {
    return u <= this.toc.blockCount ? this.toc.blockOffset(u) : this.blob.size;
  }

  // ------------------------------------------------------------------ reads

  async read(ino: number, offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    const st = this.toc.stat(ino);
    if (st.type !== EntryType.File) throw DfError.invalidArgument(`inode ${ino} is not a regular file`);
    if (!(offset >= 0) || !(length >= 0)) throw DfError.invalidArgument(`bad read range ${offset}+${length}`);
    const n = Math.max(0, Math.min(length, st.size - offset));
    if (n === 0) return Buffer.alloc(0);
    if (this.closer.signal.aborted)
      throw new DfError('FAILED_PRECONDITION', `layer ${this.blob.digest} is closed`);
    const start = st.dataOffset + offset;
    const [first, last] = this.toc.blocksForRange(start, n);
    this.cache.touch();
    const dl = childSignal(signal, this.o.readTimeoutMs, this.timers, `read of ${this.blob.digest}`);
    try {
      return await bound(this.readBlocks(first, last, start, n, dl.signal), {
        signal: dl.signal,
        what: 'read',
      });
    } catch (err) {
      const e = DfError.from(err, `read ${this.blob.digest}`);
      if (e.code === 'TIMEOUT') this.stats.readTimeouts++;
      this.stats.readErrors++;
      throw e;
    } finally {
      dl.dispose();
      if (this.o.fillAfterFirstRead) this.startBackgroundFill();
    }
  }

  private async readBlocks(
    first: number,
    last: number,
    start: number,
    n: number,
    signal: AbortSignal,
  ): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n);
    const put = (i: number, data: Buffer) => {
      const bStart = this.toc.blockStreamOffset(i);
      const from = Math.max(start, bStart) - bStart;
      const to = Math.min(start + n, bStart + data.length) - bStart;
      data.copy(out, bStart + from - start, from, to);
    };
    const waits: Promise<void>[] = [];
    let missing: number[] | undefined;
    for (let i = first; i <= last; i++) {
      const m = this.mem.get(this.memId, i);
      if (m) {
        this.stats.served('memory', 1, m.length);
        put(i, m);
      } else if (this.cache.has(i) && !this.inflight.has(i)) {
        waits.push(this.fromCache(i, signal).then((d) => put(i, d)));
      } else (missing ??= []).push(i);
    }
    if (missing) {
      const t0 = this.timers.now();
      const stored = this.ensure(missing, Priority.Blocked);
      const remote = Promise.all(
        stored.map((p, k) => p.then((s) => put(missing![k]!, this.decode(missing![k]!, s)))),
      ).finally(() => this.stats.recordBlocked(this.timers.now() - t0));
      waits.push(remote.then(() => {}));
    }
    await bound(Promise.all(waits), { signal, what: 'read' });
    return out;
  }

  /** A block from the disk cache; a block that fails verification is dropped and fetched again. */
  private async fromCache(i: number, signal: AbortSignal): Promise<Buffer> {
    const off = this.toc.blockOffset(i);
    const len = this.toc.blockStoredLength(i);
    const stored = await this.cache.read(off, len, signal);
    if (this.o.verifyCachedReads) {
      try {
        DfbReader.checkStoredBlock(this.toc, i, stored);
      } catch {
        this.stats.verifyFailures++;
        this.logger.warn(
          { digest: this.blob.digest, block: i },
          'cached block failed verification; refetching',
        );
        this.cache.invalidate(i, len);
        const [p] = this.ensure([i], Priority.Blocked);
        return this.decode(i, await p!);
      }
    }
    this.stats.served('cache', 1, len);
    return this.decode(i, stored);
  }

  private decode(i: number, stored: Buffer): Buffer {
    const m = this.mem.get(this.memId, i);
    if (m) return m;
    let d = decodeStoredBlock(stored, this.toc.blockCodec(i), this.toc.blockLength(i), `DFB block ${i}`);
    // a raw block is a view into its whole range request: do not pin that in the LRU
    if (d.buffer.byteLength > d.length * 2) d = Buffer.from(d);
    this.mem.set(this.memId, i, d);
    return d;
  }

  /**
   * Fetches blocks that are not present yet at `priority` (on behalf of readers who need them).
   * Returns one promise of verified stored bytes per unit, in order. Units already in flight are shared
   * (and their task promoted); the rest go out as runs of adjacent units of at most maxRunBytes.
   */
  private ensure(units: number[], priority: Priority, opts: UnitsOptions = {}): Promise<Buffer>[] {
    const out: Promise<Buffer>[] = new Array(units.length);
    let run: Deferred[] = [];
    let runBytes = 0;
    const flush = () => {
      if (run.length) this.startRun(run, { priority, only: opts.only });
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
        }
        out[k] = f.promise;
        flush();
        continue;
      }
      const len = this.unitOffset(u + 1) - this.unitOffset(u);
      const prev = run[run.length - 1];
      if (prev && (prev.unit !== u - 1 || runBytes + len > this.o.maxRunBytes)) flush();
      let d!: Deferred;
      const promise = new Promise<Buffer>((resolve, reject) => (d = { unit: u, resolve, reject }));
      promise.catch(() => {});
      this.inflight.set(u, { promise });
      out[k] = promise;
      run.push(d);
      runBytes += len;
    }
    flush();
    return out;
  }

  private startRun(run: Deferred[], state: RunState): void {
    const task = this.scheduler.schedule(state.priority, () => this.fetchRun(run, state));
    for (const d of run) {
      const f = this.inflight.get(d.unit)!;
      f.task = task;
      f.run = state;
    }
    task.promise.catch((err) => {
      for (const d of run) this.settle(d, err);
    });
  }

  private settle(d: Deferred, result: Buffer | unknown): void {
    const f = this.inflight.get(d.unit);
    if (!f) return;
    this.inflight.delete(d.unit);
    if (Buffer.isBuffer(result)) d.resolve(result);
    else d.reject(result);
  }

  /**
   * The sources to try, in order, for attempt `attempt` of a run: the chain rotated by the attempt (a
   * failed source is not asked first again). Background fill rotates over the P2P sources only and puts
   * the registry last, so that it is reached only when every P2P source has nothing (no seed is up) — a
   * slow seed is waited for, not bypassed; reads rotate over the whole chain.
   */
  private chainFor(attempt: number, state: RunState): BlockSource[] {
    let all = this.sources;
    if (state.only) all = all.filter((s) => state.only!.includes(s.kind));
    if (state.priority !== Priority.Fill) return rotate(all, attempt);
    const p2p = all.filter((s) => s.kind !== 'registry');
    return [...rotate(p2p, attempt), ...all.filter((s) => s.kind === 'registry')];
  }

  /** Fetches a run of units, retrying failed requests and bad units (next attempt uses the next source). */
  private async fetchRun(run: Deferred[], state: RunState): Promise<void> {
    let todo = run;
    let lastErr: unknown;
    if (this.sources.length === 0) lastErr = DfError.notFound(`no source for blob ${this.blob.digest}`);
    for (let attempt = 0; this.sources.length > 0 && attempt <= this.o.retries && todo.length; attempt++) {
      if (attempt > 0) {
        this.stats.refetches += todo.length;
        const ms = Math.min(this.o.retryMaxMs, this.o.retryBaseMs * 2 ** (attempt - 1));
        await sleep(this.timers, Math.random() * ms, this.closer.signal);
      }
      this.closer.signal.throwIfAborted();
      const chain = this.chainFor(attempt, state);
      if (!chain.length) {
        lastErr ??= DfError.notFound(`no ${state.only?.join('/')} source for blob ${this.blob.digest}`);
        break;
      }
      const next: Deferred[] = [];
      // todo may have holes after failures: one request per contiguous part
      for (const part of adjacentGroups(todo, (d) => d.unit)) {
        let err = await this.fetchPart(chain[0]!, part, next, state);
        // a source with nothing for this part (no peer holds it): the next sources, at once
        for (let s = 1; s < chain.length && isSourceUnavailable(err) && next.length; s++) {
          const again = next.splice(next.length - part.length);
          err = await this.fetchPart(chain[s]!, again, next, state);
        }
        if (err) lastErr = err;
      }
      todo = next;
      // deferred by the source: the planner that chose this run picks another, no retries
      if (isDeferred(lastErr) && state.priority === Priority.Fill) break;
    }
    const e = DfError.from(lastErr ?? DfError.internal('fetch gave up'), `fetch ${this.blob.digest}`);
    for (const d of todo) this.settle(d, e);
  }

  /** One range request for adjacent units; units to try again are pushed to `retry`. Returns the last error. */
  private async fetchPart(
    source: BlockSource,
    part: Deferred[],
    retry: Deferred[],
    state: RunState,
  ): Promise<unknown> {
    const off = this.unitOffset(part[0]!.unit);
    const len = this.unitOffset(part[part.length - 1]!.unit + 1) - off;
    const what = `${source.name}: ${this.blob.digest} bytes ${off}+${len}`;
    // the limit grows with the size: a large run on a thin, shared link is slow, not failed
    const ms = transferTimeoutMs(this.o.requestTimeoutMs, len);
    const rq = childSignal(this.closer.signal, ms, this.timers, what);
    const t0 = this.timers.now();
    let data: Buffer;
    try {
      const ctx = { priority: state.priority, planned: state.only !== undefined };
      data = await bound(source.fetch(this.blob, off, len, rq.signal, ctx), {
        signal: rq.signal,
        what,
      });
      if (data.length !== len) throw new DfError('NETWORK', `${what}: got ${data.length} bytes`);
      this.stats.recordFetch(source.kind, this.timers.now() - t0, true);
    } catch (err) {
      if (!isSourceUnavailable(err)) this.stats.recordFetch(source.kind, this.timers.now() - t0, false);
      if (this.closer.signal.aborted) throw err;
      retry.push(...part);
      return err;
    } finally {
      rq.dispose();
    }
    let lastErr: unknown;
    const good: { d: Deferred; uOff: number; stored: Buffer }[] = [];
    for (const d of part) {
      const uOff = this.unitOffset(d.unit);
      const stored = data.subarray(uOff - off, this.unitOffset(d.unit + 1) - off);
      try {
        this.checkUnit(d.unit, stored);
        good.push({ d, uOff, stored });
      } catch (err) {
        this.stats.verifyFailures++;
        source.badBlock?.(this.blob, data, uOff - off, stored.length);
        retry.push(d);
        lastErr = err;
      }
    }
    // the verified units, each adjacent group in one write
    for (const group of adjacentGroups(good, (g) => g.d.unit)) {
      const first = group[0]!;
      const last = group[group.length - 1]!;
      const span = data.subarray(first.uOff - off, last.uOff - off + last.stored.length);
      try {
        const units = group.map((g) => ({ unit: g.d.unit, length: g.stored.length }));
        await this.cache.writeUnits(units, first.uOff, span, this.closer.signal);
      } catch (err) {
        // verified but not storable (NO_SPACE, ...): the reader gets the error, the cache stays consistent
        for (const g of group) this.settle(g.d, DfError.from(err, `cache ${this.blob.digest}`));
        lastErr = err;
        continue;
      }
      for (const g of group) {
        this.stats.served(source.kind, 1, g.stored.length);
        this.settle(g.d, g.stored);
      }
    }
    return lastErr;
  }

  private checkUnit(u: number, stored: Buffer): void {
    if (u < this.tocUnit) return DfbReader.checkStoredBlock(this.toc, u, stored);
    const footer = decodeFooter(stored.subarray(stored.length - FOOTER_SIZE), this.blob.size);
    const toc = DfbReader.decodeStoredToc(footer, stored.subarray(0, stored.length - FOOTER_SIZE));
    if (!toc.buffer.equals(this.toc.buffer)) throw DfError.corrupt(`DFB TOC of ${this.blob.digest} changed`);
  }

  /**
   * Verified stored bytes of units (blocks, or the TOC unit = toc.blockCount), from the cache or fetched
   * at `priority` (coalesced with any fetch of them in flight). For seeds and P2P fill, which move units.
   */
  async units(
    units: number[],
    priority: Priority,
    signal?: AbortSignal,
    opts: UnitsOptions = {},
  ): Promise<Buffer[]> {
    const out: Buffer[] = new Array(units.length);
    const missing: number[] = [];
    const at: number[] = [];
    const reads: Promise<void>[] = [];
    const present = (u: number) => this.cache.has(u) && !this.inflight.has(u);
    for (let k = 0; k < units.length; k++) {
      const u = units[k]!;
      if (u < 0 || u > this.tocUnit) throw DfError.invalidArgument(`unit ${u} out of range`);
      if (!present(u)) {
        missing.push(u);
        at.push(k);
        continue;
      }
      // adjacent units in the cache: one read, split
      let j = k;
      while (j + 1 < units.length && units[j + 1] === units[j]! + 1 && present(units[j + 1]!)) j++;
      const first = k;
      const off = this.unitOffset(u);
      const end = this.unitOffset(units[j]! + 1);
      reads.push(
        this.cache.read(off, end - off, signal).then((b) => {
          for (let i = first; i <= j; i++) {
            const o = this.unitOffset(units[i]!) - off;
            out[i] = b.subarray(o, this.unitOffset(units[i]! + 1) - off);
          }
        }),
      );
      k = j;
    }
    const fetched = missing.length ? this.ensure(missing, priority, opts) : [];
    const all = fetched.map((p, j) => p.then((b) => void (out[at[j]!] = b)));
    await bound(Promise.all([...reads, ...all]), { signal, what: 'units' });
    return out;
  }

  /** Fetches blocks under a file range at Prefetch priority into the cache (no decompression). */
  async prefetch(ino: number, offset: number, length: number, signal?: AbortSignal): Promise<void> {
    const st = this.toc.stat(ino);
    const n = Math.max(0, Math.min(length, st.size - offset));
    if (st.type !== EntryType.File || n === 0) return;
    const [first, last] = this.toc.blocksForRange(st.dataOffset + offset, n);
    const want: number[] = [];
    for (let i = first; i <= last; i++) if (!this.cache.has(i)) want.push(i);
    if (want.length)
      await bound(Promise.all(this.ensure(want, Priority.Prefetch)), { signal, what: 'prefetch' });
  }

  // ------------------------------------------------------------------ background fill

  /** Starts filling every missing unit at Fill priority (idempotent). Stops only at close(). */
  startBackgroundFill(): void {
    if (this.fill || this.closer.signal.aborted) return;
    this.fill = this.fillLoop().catch((err) => {
      if (!this.closer.signal.aborted)
        this.logger.error({ err, digest: this.blob.digest }, 'background fill stopped');
      this.completion.reject(err);
    });
  }

  /** Resolves when the whole blob is cached and its digest checked; rejects on a digest mismatch or close. */
  whenComplete(): Promise<void> {
    return this.completion.promise;
  }

  get filling(): boolean {
    return this.fill !== undefined;
  }

  /** Whether unit u is being fetched now. */
  inFlight(u: number): boolean {
    return this.inflight.has(u);
  }

  /**
   * For a fill planner: waits until fill may issue its next run (no on-demand reads waiting, see
   * FetchScheduler.fillTurn) and returns how large that run may be (at most `maxRunBytes`).
   */
  fillTurn(maxRunBytes: number, signal?: AbortSignal): Promise<number> {
    return this.scheduler.fillTurn(Math.min(maxRunBytes, this.o.maxRunBytes), signal);
  }

  private async fillLoop(): Promise<void> {
    const signal = this.closer.signal;
    let failures = 0;
    if (this.planner && !this.cache.isComplete) {
      try {
        await this.planner(this, signal);
      } catch (err) {
        signal.throwIfAborted();
        this.logger.warn({ err, digest: this.blob.digest }, 'fill planner stopped; filling in order');
      }
    }
    while (!signal.aborted) {
      if (this.cache.isComplete) {
        if (!this.cache.verified) {
          await this.cache.flush(signal);
          const r = await this.cache.verifyComplete(signal);
          if (!r.ok) {
            this.stats.completeMismatches++;
            throw DfError.digestMismatch(
              `cached blob ${this.blob.digest}`,
              this.blob.digest,
              r.actual ?? '?',
            );
          }
          this.stats.completeVerified++;
        }
        this.completion.resolve();
        return;
      }
      if (this.tocUnitBytes && !this.cache.has(this.tocUnit)) {
        await this.cache
          .write(this.tocUnit, this.unitOffset(this.tocUnit), this.tocUnitBytes, signal)
          .then(() => (this.tocUnitBytes = undefined))
          .catch(() => {});
      }
      let failed = false;
      let cursor = 0;
      let runLimit = this.o.maxRunBytes;
      const nextRun = (): number[] | undefined => {
        let u = this.cache.nextMissing(cursor);
        while (u >= 0 && this.inflight.has(u)) u = this.cache.nextMissing(u + 1);
        if (u < 0) return undefined;
        const units = [u];
        let bytes = this.unitOffset(u + 1) - this.unitOffset(u);
        for (let v = u + 1; v <= this.tocUnit && !this.cache.has(v) && !this.inflight.has(v); v++) {
          const l = this.unitOffset(v + 1) - this.unitOffset(v);
          if (bytes + l > runLimit) break;
          units.push(v);
          bytes += l;
        }
        cursor = units[units.length - 1]! + 1;
        return units;
      };
      const worker = async () => {
        for (;;) {
          // Wait for the scheduler's go-ahead (no on-demand reads waiting) and take the run size it allows
          // now, so that a run decided early does not go out at full size into a burst of reads.
          runLimit = await this.scheduler.fillTurn(this.o.maxRunBytes, signal);
          const units = nextRun();
          if (!units || signal.aborted) break;
          const bytes = this.unitOffset(units[units.length - 1]! + 1) - this.unitOffset(units[0]!);
          await this.bucket.take(bytes, signal);
          // some units may have arrived (or started) while waiting for tokens
          const still = units.filter((u) => !this.cache.has(u));
          const res = await Promise.allSettled(this.ensure(still, Priority.Fill));
          for (const r of res) {
            if (r.status === 'fulfilled') this.stats.fillBytes += r.value.length;
            else failed = true;
          }
        }
      };
      await Promise.all(Array.from({ length: this.o.fillConcurrency }, worker));
      // wait for units other readers have in flight before looking again
      if (this.inflight.size) await Promise.allSettled([...this.inflight.values()].map((f) => f.promise));
      if (failed) {
        failures++;
        const ms = Math.min(this.o.fillRetryMs * 2 ** Math.min(failures - 1, 4), 5 * 60_000);
        this.logger.warn(
          { digest: this.blob.digest, retryMs: ms },
          'background fill: some blocks failed; retrying',
        );
        await sleep(this.timers, ms, signal);
      } else failures = 0;
    }
    signal.throwIfAborted();
  }

  /** Stops background fill and in-flight fetches. The cache is not closed (the owner releases it). */
  async close(): Promise<void> {
    if (this.closer.signal.aborted) return;
    this.closer.abort(DfError.aborted(`layer ${this.blob.digest} closed`));
    this.completion.reject(DfError.aborted(`layer ${this.blob.digest} closed`));
    await this.fill;
    await this.cache.flush().catch((err) => {
      if (!isDfError(err, 'ABORTED'))
        this.logger.warn({ err, digest: this.blob.digest }, 'cache flush failed at close');
    });
  }
}

/** `items` (in unit order) split into groups of adjacent units. */
function adjacentGroups<T>(items: readonly T[], unit: (x: T) => number): T[][] {
  const out: T[][] = [];
  for (let a = 0; a < items.length;) {
    let b = a;
    while (b + 1 < items.length && unit(items[b + 1]!) === unit(items[b]!) + 1) b++;
    out.push(items.slice(a, b + 1));
    a = b + 1;
  }
  return out;
}
