import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { realTimers, type Timers } from '../util/timers.js';
import { BlobCache, type CacheIo } from './blob-cache.js';
import { readBitmap, readMeta } from './blob-files.js';
import { DirLock } from './dir-lock.js';

export interface CacheManagerOptions {
  /** Cache directory (config cache.dir). Blobs live in `<dir>/blobs/sha256/<hex>/`. */
  dir: string;
  /** When the filled bytes exceed this, unused blobs are evicted (LRU) until below lowWatermark. */
  highWatermark: number;
  lowWatermark: number;
  /** Take the pid-file lock on the directory (default true). */
  lock?: boolean;
  flushIntervalMs?: number;
  flushBytes?: number;
  diskTimeoutMs?: number;
  io?: CacheIo;
  timers?: Timers;
  logger?: Logger;
}

/** One line of `dfnode status`. */
export interface BlobCacheInfo {
  digest: string;
  size: number;
  filledBytes: number;
  /** Units (blocks + the TOC unit); 0 while the TOC is unknown. */
  blocks: number;
  present: number;
  complete: boolean;
  inUse: boolean;
  lastUsed: number;
}

interface Entry {
  digest: string;
  size: number;
  refs: number;
  cache?: BlobCache;
  opening?: Promise<BlobCache>;
  /** Last known state when not open. */
  filledBytes: number;
  units: number;
  present: number;
  lastUsed: number;
}

/**
 * All blob caches under one directory: opens them with reference counts (a blob is in use while a mount
 * holds it), keeps the total of filled bytes and evicts unused blobs, least recently used first, when
 * the total exceeds the high watermark.
 */
export class CacheManager {
  readonly dir: string;
  private highWatermark: number;
  private lowWatermark: number;
  private readonly entries = new Map<string, Entry>();
  private readonly evicting = new Map<string, Promise<void>>();
  private total = 0;
  private lock: DirLock | undefined;
  private evictRun: Promise<void> | undefined;
  private evictAgain = false;
  private warnedFull = false;
  private closed = false;
  private readonly timers: Timers;
  private readonly logger: Logger;
  /**
   * Asked when an eviction pass leaves the cache above the high watermark because every remaining blob is
   * in use: gives back a reference something holds without needing it (layers kept open after a preheat),
   * true when it did; the pass then evicts again.
   */
  onFull: (() => Promise<boolean>) | undefined;

  constructor(private readonly opts: CacheManagerOptions) {
    this.dir = opts.dir;
    this.highWatermark = opts.highWatermark;
    this.lowWatermark = Math.min(opts.lowWatermark, opts.highWatermark);
    this.timers = opts.timers ?? realTimers;
    this.logger = opts.logger ?? silentLogger;
  }

  /** The cache of a node or a seed as configured (`cache.*`); `lock: false` for a reader such as `status`. */
  static fromConfig(cache: Config['cache'], opts: { logger?: Logger; lock?: boolean } = {}): CacheManager {
    return new CacheManager({
      dir: cache.dir,
      highWatermark: cache.highWatermark,
      lowWatermark: cache.lowWatermark,
      lock: opts.lock,
      logger: opts.logger,
    });
  }

  private blobDir(digest: string): string {
    const [algo, hex] = digest.split(':');
    if (algo !== 'sha256' || !hex || !/^[a-f0-9]{64}$/.test(hex)) {
      throw DfError.invalidArgument(`cache: not a sha256 digest: ${digest}`);
    }
    return join(this.dir, 'blobs', 'sha256', hex);
  }

  /** Locks the directory and reads the state of every cached blob (meta + bitmap, no data). */
  async init(): Promise<void> {
    const root = join(this.dir, 'blobs', 'sha256');
    await mkdir(root, { recursive: true }).catch((err) => {
      throw DfError.from(err, `create cache directory ${this.dir}`);
    });
    if (this.opts.lock !== false) this.lock = await DirLock.acquire(this.dir);
    for (const hex of await readdir(root)) {
      if (!/^[a-f0-9]{64}$/.test(hex)) continue;
      const dir = join(root, hex);
      const meta = await readMeta(dir);
      if (!meta || meta.digest !== `sha256:${hex}`) {
        this.logger.warn({ dir }, 'cache: removing a blob directory without valid metadata');
        await rm(dir, { recursive: true, force: true });
        continue;
      }
      const units = meta.blockCount === undefined ? 0 : meta.blockCount + 1;
      const bm = units ? await readBitmap(dir, units) : undefined;
      const e: Entry = {
        digest: meta.digest,
        size: meta.size,
        refs: 0,
        filledBytes: bm?.filledBytes ?? 0,
        units,
        present: bm?.bitmap.present ?? 0,
        lastUsed: meta.lastUsed,
      };
      this.entries.set(e.digest, e);
      this.total += e.filledBytes;
    }
  }

  /** Whether the cache holds anything of `digest` (on disk or open): false means a cache would start empty. */
  holds(digest: string): boolean {
    return this.entries.has(digest);
  }

  /** Bytes of blob data held (sum of filled bytes). */
  get totalBytes(): number {
    return this.total;
  }

  setWatermarks(high: number, low: number): void {
    this.highWatermark = high;
    this.lowWatermark = Math.min(low, high);
    this.maybeEvict();
  }

  /** Opens (or shares) the cache of a blob; each open must be paired with release(). */
  async open(blob: { digest: string; size: number }, signal?: AbortSignal): Promise<BlobCache> {
    if (this.closed) throw new DfError('FAILED_PRECONDITION', 'cache manager is closed');
    const dir = this.blobDir(blob.digest);
    await this.evicting.get(blob.digest);
    let e = this.entries.get(blob.digest);
    if (e && e.size !== blob.size) {
      if (e.refs > 0)
        throw DfError.invalidArgument(
          `cache: blob ${blob.digest} is open with size ${e.size}, not ${blob.size}`,
        );
      this.total -= e.filledBytes;
      e = undefined;
    }
    if (!e) {
      e = {
        digest: blob.digest,
        size: blob.size,
        refs: 0,
        filledBytes: 0,
        units: 0,
        present: 0,
        lastUsed: 0,
      };
      this.entries.set(blob.digest, e);
    }
    const entry = e;
    entry.refs++;
    try {
      if (entry.cache) return entry.cache;
      if (!entry.opening) {
        entry.opening = BlobCache.open(
          {
            dir,
            digest: blob.digest,
            size: blob.size,
            flushIntervalMs: this.opts.flushIntervalMs,
            flushBytes: this.opts.flushBytes,
            diskTimeoutMs: this.opts.diskTimeoutMs,
            io: this.opts.io,
            timers: this.timers,
            logger: this.logger,
            onChange: (_c, delta) => {
              this.total += delta;
              entry.filledBytes += delta;
              if (delta > 0) this.maybeEvict();
            },
          },
          signal,
        ).finally(() => (entry.opening = undefined));
      }
      const cache = await entry.opening;
      if (!entry.cache) {
        entry.cache = cache;
        // the opened state replaces what the scan found
        this.total += cache.filledBytes - entry.filledBytes;
        entry.filledBytes = cache.filledBytes;
        cache.touch();
      }
      return entry.cache;
    } catch (err) {
      entry.refs--;
      if (entry.refs === 0 && !entry.cache) this.entries.delete(blob.digest);
      throw err;
    }
  }

  /** Drops one reference; the last one flushes and closes the blob (it stays on disk). */
  async release(cache: BlobCache): Promise<void> {
    const e = this.entries.get(cache.digest);
    if (!e || e.cache !== cache || e.refs === 0) return;
    e.refs--;
    if (e.refs > 0) return;
    cache.touch();
    e.cache = undefined;
    e.units = cache.unitCount;
    e.present = cache.presentUnits;
    e.lastUsed = cache.lastUsed;
    await cache.close();
    this.maybeEvict();
  }

  list(): BlobCacheInfo[] {
    const out: BlobCacheInfo[] = [];
    for (const e of this.entries.values()) {
      const c = e.cache;
      const units = c ? c.unitCount : e.units;
      const present = c ? c.presentUnits : e.present;
      out.push({
        digest: e.digest,
        size: e.size,
        filledBytes: e.filledBytes,
        blocks: units,
        present,
        complete: units > 0 && present === units,
        inUse: e.refs > 0,
        lastUsed: c ? c.lastUsed : e.lastUsed,
      });
    }
    return out.sort((a, b) => b.lastUsed - a.lastUsed);
  }

  /** How many open() references a blob's cache has now (0: nobody has it open). */
  users(digest: string): number {
    return this.entries.get(digest)?.refs ?? 0;
  }

  /** Evicts one blob if unused; false when it is in use or unknown. */
  async evict(digest: string): Promise<boolean> {
    const e = this.entries.get(digest);
    if (!e || e.refs > 0 || e.opening) return false;
    this.entries.delete(digest);
    this.total -= e.filledBytes;
    const p = rm(this.blobDir(digest), { recursive: true, force: true }).catch((err) => {
      this.logger.warn({ err, digest }, 'cache: eviction failed to remove files');
    });
    this.evicting.set(digest, p);
    await p;
    this.evicting.delete(digest);
    this.logger.info({ digest, bytes: e.filledBytes }, 'cache: evicted blob');
    return true;
  }

  /** Evicts every blob no mount uses. Returns the digests evicted and the bytes freed. */
  async gc(): Promise<{ evicted: string[]; freedBytes: number }> {
    const evicted: string[] = [];
    let freedBytes = 0;
    for (const e of [...this.entries.values()]) {
      const bytes = e.filledBytes;
      if (await this.evict(e.digest)) {
        evicted.push(e.digest);
        freedBytes += bytes;
      }
    }
    return { evicted, freedBytes };
  }

  /** Resolves when the current eviction pass (if any) is done. */
  async settled(): Promise<void> {
    while (this.evictRun) await this.evictRun;
  }

  private maybeEvict(): void {
    if (this.total <= this.highWatermark || this.closed) return;
    if (this.evictRun) {
      this.evictAgain = true;
      return;
    }
    this.evictRun = (async () => {
      try {
        do {
          this.evictAgain = false;
          await this.evictToLow();
        } while (this.evictAgain && this.total > this.highWatermark);
      } catch (err) {
        this.logger.warn({ err }, 'cache: eviction pass failed');
      } finally {
        this.evictRun = undefined;
      }
    })();
  }

  private async evictToLow(): Promise<void> {
    const candidates = [...this.entries.values()]
      .filter((e) => e.refs === 0 && !e.opening)
      .sort((a, b) => a.lastUsed - b.lastUsed);
    for (const e of candidates) {
      if (this.total < this.lowWatermark) return;
      await this.evict(e.digest);
    }
    if (this.total > this.highWatermark && this.onFull) {
      const freed = await this.onFull().catch((err: unknown) => {
        this.logger.warn({ err }, 'cache: releasing held blobs failed');
        return false;
      });
      // the released blobs are unused now (unless a mount also holds them): the pass evicts again
      if (freed) {
        this.evictAgain = true;
        return;
      }
    }
    if (this.total > this.highWatermark && !this.warnedFull) {
      this.warnedFull = true;
      this.logger.warn(
        { total: this.total, high: this.highWatermark },
        'cache: above the high watermark and every remaining blob is in use',
      );
    } else if (this.total <= this.highWatermark) this.warnedFull = false;
  }

  /** Closes every open blob (flushing bitmaps) and releases the directory lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.settled();
    // opens in progress finish (an aborted one stops at its next step) before the caches close
    await Promise.allSettled([...this.entries.values()].flatMap((e) => (e.opening ? [e.opening] : [])));
    for (const e of this.entries.values()) {
      const c = e.cache;
      if (!c) continue;
      e.cache = undefined;
      e.refs = 0;
      await c.close().catch((err) => this.logger.warn({ err, digest: e.digest }, 'cache: close failed'));
    }
    await this.lock?.release();
  }
}
