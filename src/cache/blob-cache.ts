import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open, readFile, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { abortReason, bound, realTimers, type Timers } from '../util/timers.js';
import { Bitmap } from './bitmap.js';
import { BITMAP_FILE, DATA_FILE, readMeta, writeAtomic, writeMeta, type BlobMeta } from './blob-files.js';

/** Disk writes, injectable so that tests can simulate a full disk. */
export interface CacheIo {
  write(fh: FileHandle, data: Buffer, position: number): Promise<void>;
}

export const defaultCacheIo: CacheIo = {
  async write(fh, data, position) {
    let done = 0;
    while (done < data.length) {
      const { bytesWritten } = await fh.write(data, done, data.length - done, position + done);
      done += bytesWritten;
    }
  },
};

export interface BlobCacheOptions {
  /** Directory of this blob (created). */
  dir: string;
  digest: string;
  size: number;
  /**
   * Persist the bitmap at most this often while blocks arrive (ms). Default 1000: a crash refetches at
   * most the last second's blocks; each flush is an fdatasync plus an atomic bitmap replace (3 syncs).
   */
  flushIntervalMs?: number;
  /** ...or as soon as this many bytes are waiting to be claimed by the bitmap. Default 16 MiB. */
  flushBytes?: number;
  /** Time limit of each disk operation. Default 30 s. */
  diskTimeoutMs?: number;
  io?: CacheIo;
  timers?: Timers;
  logger?: Logger;
  /** Called (synchronously) after filledBytes changes; the manager uses it for watermarks. */
  onChange?: (cache: BlobCache, deltaBytes: number) => void;
}

/**
 * Told synchronously when units change in the in-memory bitmap (the native FUSE binding mirrors it to serve
 * reads of present blocks without JS).
 */
export interface CacheUnitListener {
  /** The unit's bytes were written to the data file (after verification) and it is now present. */
  present(unit: number): void;
  /** Units went away or the bitmap was replaced (invalidate, drop, setLayout): read snapshot() again. */
  reset(): void;
}

/**
 * The local copy of one blob: a sparse file holding stored bytes at their blob offsets (complete file =
 * the blob) and a bitmap of the units present: blocks 0..n-1 and the TOC unit n (TOC + footer).
 *
 * Crash safety: a unit is marked present in memory right after its bytes are written (reads use it at
 * once), but the persisted bitmap only claims units whose bytes were fdatasync'ed before the bitmap was
 * written (tmp + fsync + rename). A crash loses at most the units written since the last flush.
 *
 * A cache in a directory this process created writes its meta file without fsync until the first bitmap
 * (a cold pull's TOC does not wait for four fsyncs): a crash before then may lose the meta, and a bitmap is
 * only read under a meta with a layout, so the cache simply starts again; the first flush makes the meta
 * durable before it writes a bitmap that relies on it.
 */
export class BlobCache {
  readonly digest: string;
  readonly size: number;
  readonly dir: string;
  private meta: BlobMeta;
  private bitmap: Bitmap | undefined;
  private filled = 0;
  private fh: FileHandle | undefined;
  private dirty = false;
  private metaDirty = false;
  /** The meta file was written without fsync (a cache in a directory this process created; see above). */
  private metaUnsynced = false;
  private pendingBytes = 0;
  private flushTimer: unknown;
  private flushing: Promise<void> | undefined;
  private flushAgain = false;
  private closed = false;
  private readonly flushIntervalMs: number;
  private readonly flushBytes: number;
  private readonly diskTimeoutMs: number;
  private readonly io: CacheIo;
  private readonly timers: Timers;
  private readonly logger: Logger;
  private readonly onChange: ((cache: BlobCache, delta: number) => void) | undefined;
  private readonly unitListeners = new Set<CacheUnitListener>();

  private constructor(opts: BlobCacheOptions, meta: BlobMeta) {
    this.digest = opts.digest;
    this.size = opts.size;
    this.dir = opts.dir;
    this.meta = meta;
    this.flushIntervalMs = opts.flushIntervalMs ?? 1000;
    this.flushBytes = opts.flushBytes ?? 16 * 1024 * 1024;
    this.diskTimeoutMs = opts.diskTimeoutMs ?? 30_000;
    this.io = opts.io ?? defaultCacheIo;
    this.timers = opts.timers ?? realTimers;
    this.logger = opts.logger ?? silentLogger;
    this.onChange = opts.onChange;
  }

  /** Opens (resumes) or creates the cache of a blob. A garbled meta or bitmap file counts as empty. */
  static async open(opts: BlobCacheOptions, signal?: AbortSignal): Promise<BlobCache> {
    const what = `cache ${opts.dir}`;
    const timers = opts.timers ?? realTimers;
    const ms = opts.diskTimeoutMs ?? 30_000;
    // the signal is checked between steps, not raced against them: an aborted open has finished its file
    // operations (and closed its file) when it rejects, so that nothing writes into the directory after
    const step = () => {
      if (signal?.aborted) throw abortReason(signal);
    };
    const work = (async () => {
      let c: BlobCache | undefined;
      try {
        step();
        // undefined when the directory existed: then it may hold an older cache's files
        const created = (await mkdir(opts.dir, { recursive: true })) !== undefined;
        let meta = created ? undefined : await readMeta(opts.dir);
        step();
        if (!meta || meta.digest !== opts.digest || meta.size !== opts.size) {
          meta = { version: 1, digest: opts.digest, size: opts.size, lastUsed: timers.now() };
          // a new (or untrusted) cache starts from nothing: no bitmap claims anything
          if (!created) await rm(join(opts.dir, BITMAP_FILE), { force: true });
          await writeMeta(opts.dir, meta, !created);
          step();
        }
        c = new BlobCache(opts, meta);
        c.metaUnsynced = created;
        c.fh = await open(join(opts.dir, DATA_FILE), constants.O_RDWR | constants.O_CREAT, 0o644);
        const st = await c.fh.stat();
        if (st.size !== opts.size) await c.fh.truncate(opts.size);
        if (meta.blockCount !== undefined) await c.loadBitmap(meta.blockCount + 1);
        step();
        return c;
      } catch (err) {
        await c?.fh?.close().catch(() => undefined);
        throw DfError.from(err, `open ${what}`);
      }
    })();
    try {
      return await bound(work, { ms, timers, what: `open ${what}` });
    } catch (err) {
      // a disk that answered after the time limit: the file it opened is closed, not leaked
      void work.then(
        (c) => c.fh?.close().catch(() => undefined),
        () => undefined,
      );
      throw err;
    }
  }

  private async loadBitmap(units: number): Promise<void> {
    let buf: Buffer | undefined;
    try {
      buf = await readFile(join(this.dir, BITMAP_FILE));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const dec = buf && Bitmap.decode(buf, units);
    if (buf && !dec)
      this.logger.warn({ digest: this.digest }, 'cache bitmap is damaged; the blob will be refetched');
    this.bitmap = dec ? dec.bitmap : new Bitmap(units);
    this.filled = dec ? dec.filledBytes : 0;
    if (!dec || !this.bitmap.full) this.meta.verified = false;
  }

  /** Block count and TOC offset, once known (from the meta file or setLayout). */
  get layout(): { blockCount: number; tocOffset: number } | undefined {
    const { blockCount, tocOffset } = this.meta;
    return blockCount === undefined || tocOffset === undefined ? undefined : { blockCount, tocOffset };
  }

  /** Records the layout from a verified TOC. A different persisted layout means the cache is reset. */
  async setLayout(blockCount: number, tocOffset: number, signal?: AbortSignal): Promise<void> {
    const cur = this.layout;
    if (cur && cur.blockCount === blockCount && cur.tocOffset === tocOffset && this.bitmap) return;
    await this.flushing?.catch(() => {});
    this.meta = { ...this.meta, blockCount, tocOffset, verified: false };
    const delta = -this.filled;
    this.bitmap = new Bitmap(blockCount + 1);
    this.filled = 0;
    this.notifyUnits(undefined);
    // no bitmap was ever written under an unsynced meta: nothing to remove, nothing to make durable yet
    const sync = !this.metaUnsynced;
    await this.disk('write meta', signal, async () => {
      if (sync) await rm(join(this.dir, BITMAP_FILE), { force: true });
      await writeMeta(this.dir, this.meta, sync);
    });
    if (delta) this.onChange?.(this, delta);
  }

  /** The sparse data file: stored bytes at their blob offsets (only units that are present are meaningful). */
  get dataPath(): string {
    return join(this.dir, DATA_FILE);
  }

  /** Adds a listener of unit presence; returns its removal. */
  addUnitListener(l: CacheUnitListener): () => void {
    this.unitListeners.add(l);
    return () => void this.unitListeners.delete(l);
  }

  private notifyUnits(unit: number | undefined): void {
    for (const l of this.unitListeners) {
      try {
        if (unit === undefined) l.reset();
        else l.present(unit);
      } catch (err) {
        this.logger.warn({ err, digest: this.digest }, 'cache unit listener threw');
      }
    }
  }

  /** Units: blocks 0..blockCount-1, then the TOC unit (index blockCount). 0 before the layout is known. */
  get unitCount(): number {
    return this.bitmap?.size ?? 0;
  }
  get tocUnit(): number {
    return this.unitCount - 1;
  }
  has(unit: number): boolean {
    return this.bitmap !== undefined && unit >= 0 && unit < this.bitmap.size && this.bitmap.has(unit);
  }
  /** First missing unit >= from, or -1. */
  nextMissing(from = 0): number {
    return this.bitmap ? this.bitmap.nextClear(from) : -1;
  }
  get presentUnits(): number {
    return this.bitmap?.present ?? 0;
  }
  get filledBytes(): number {
    return this.filled;
  }
  get isComplete(): boolean {
    return this.bitmap !== undefined && this.bitmap.full;
  }
  get verified(): boolean {
    return this.meta.verified === true;
  }
  get lastUsed(): number {
    return this.meta.lastUsed;
  }
  touch(): void {
    this.meta.lastUsed = this.timers.now();
    this.metaDirty = true;
  }
  /** The in-memory bitmap (units present now), e.g. to announce to peers. */
  snapshot(): Uint8Array {
    return this.bitmap ? this.bitmap.bits.slice() : new Uint8Array(0);
  }

  /**
   * Writes a unit's stored bytes at its blob offset and marks it present. The caller has verified them.
   * ENOSPC/EDQUOT → DfError NO_SPACE with the bitmap unchanged.
   */
  async write(unit: number, offset: number, data: Buffer, signal?: AbortSignal): Promise<void> {
    return this.writeUnits([{ unit, length: data.length }], offset, data, signal);
  }

  /**
   * Writes adjacent units (in order, their lengths adding up to data.length) starting at blob offset
   * `offset`, in one write, and marks them present. The caller has verified them. A no-op when all are
   * present already; ENOSPC/EDQUOT → DfError NO_SPACE with the bitmap unchanged.
   */
  async writeUnits(
    units: readonly { unit: number; length: number }[],
    offset: number,
    data: Buffer,
    signal?: AbortSignal,
  ): Promise<void> {
    const bm = this.requireBitmap();
    const total = units.reduce((a, x) => a + x.length, 0);
    const inRange = units.every((x) => x.unit >= 0 && x.unit < bm.size);
    if (!inRange || offset < 0 || offset + data.length > this.size || total !== data.length) {
      throw DfError.invalidArgument(
        `cache ${this.digest}: units ${units.map((x) => x.unit).join(',')} at ${offset}+${data.length} are out of range`,
      );
    }
    if (units.every((x) => bm.has(x.unit))) return;
    const fh = this.requireOpen();
    await this.disk('write', signal, () => this.io.write(fh, data, offset));
    if (this.closed || this.bitmap !== bm) return;
    let added = 0;
    for (const x of units) {
      if (!bm.set(x.unit)) continue;
      this.notifyUnits(x.unit);
      added += x.length;
    }
    if (!added) return;
    this.filled += added;
    this.pendingBytes += added;
    this.dirty = true;
    this.onChange?.(this, added);
    if (this.pendingBytes >= this.flushBytes || bm.full) void this.flush().catch(() => {});
    else this.scheduleFlush();
  }

  /** Reads bytes from the data file. Only meaningful for units that are present. */
  async read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    const fh = this.requireOpen();
    if (offset < 0 || offset + length > this.size) {
      throw DfError.invalidArgument(`cache ${this.digest}: read ${offset}+${length} is out of range`);
    }
    const buf = Buffer.allocUnsafe(length);
    await this.disk('read', signal, async () => {
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw DfError.corrupt(`cache ${this.digest}: data file is short`);
        done += bytesRead;
      }
    });
    return buf;
  }

  /** Forgets a unit whose cached bytes turned out to be bad. */
  invalidate(unit: number, length: number): void {
    if (this.bitmap?.clear(unit)) {
      this.notifyUnits(undefined);
      this.filled -= length;
      this.dirty = true;
      this.meta.verified = false;
      this.metaDirty = true;
      this.onChange?.(this, -length);
      this.scheduleFlush();
    }
  }

  private scheduleFlush(): void {
    if (this.flushTimer !== undefined || this.closed) return;
    this.flushTimer = this.timers.setTimeout(() => {
      this.flushTimer = undefined;
      this.flush().catch((err) =>
        this.logger.warn({ err, digest: this.digest }, 'cache bitmap flush failed; will retry'),
      );
    }, this.flushIntervalMs);
  }

  /**
   * Makes everything written so far durable: fdatasync the data, then atomically replace the bitmap with
   * the set of units written before the sync. Concurrent calls share one flush (and run one more after).
   */
  async flush(signal?: AbortSignal): Promise<void> {
    if (this.flushing) {
      this.flushAgain = true;
      return this.flushing;
    }
    this.flushing = (async () => {
      try {
        do {
          this.flushAgain = false;
          await this.flushOnce(signal);
        } while (this.flushAgain);
      } finally {
        this.flushing = undefined;
      }
    })();
    return this.flushing;
  }

  private async flushOnce(signal?: AbortSignal): Promise<void> {
    if (!this.fh) return;
    if (this.dirty && this.bitmap) {
      const snap = this.bitmap.clone();
      const filled = this.filled;
      const pending = this.pendingBytes;
      this.dirty = false;
      this.pendingBytes = 0;
      try {
        const fh = this.fh;
        await this.disk('flush', signal, async () => {
          await fh.datasync();
          // the layout this bitmap is read under must be on disk before it
          if (this.metaUnsynced) {
            await writeMeta(this.dir, this.meta);
            this.metaUnsynced = false;
          }
          await writeAtomic(this.dir, BITMAP_FILE, snap.encode(filled));
        });
      } catch (err) {
        this.dirty = true;
        this.pendingBytes += pending;
        throw err;
      }
    }
    if (this.metaDirty) {
      this.metaDirty = false;
      await this.disk('write meta', signal, () => writeMeta(this.dir, this.meta));
    }
  }

  /**
   * Hashes the complete file and compares it with the blob digest. On success the result is remembered
   * (meta `verified`); on mismatch the cache is dropped (everything will be refetched).
   */
  async verifyComplete(signal?: AbortSignal): Promise<{ ok: boolean; actual?: string }> {
    if (!this.isComplete) return { ok: false };
    const fh = this.requireOpen();
    const hash = createHash('sha256');
    const chunk = Buffer.allocUnsafe(1024 * 1024);
    for (let pos = 0; pos < this.size;) {
      signal?.throwIfAborted();
      const n = Math.min(chunk.length, this.size - pos);
      const { bytesRead } = await this.disk('verify', signal, () => fh.read(chunk, 0, n, pos));
      if (bytesRead === 0) break;
      hash.update(chunk.subarray(0, bytesRead));
      pos += bytesRead;
    }
    const actual = 'sha256:' + hash.digest('hex');
    if (actual === this.digest) {
      this.meta.verified = true;
      this.metaDirty = true;
      await this.flush(signal);
      return { ok: true, actual };
    }
    this.logger.error(
      { digest: this.digest, actual },
      'complete cache file does not match the blob digest; dropped',
    );
    await this.drop(signal);
    return { ok: false, actual };
  }

  /** Empties the cache of this blob (bitmap and data), keeping the layout. */
  async drop(signal?: AbortSignal): Promise<void> {
    // a flush in progress may hold a snapshot that claims the units being dropped: let it land first
    await this.flushing?.catch(() => {});
    const delta = -this.filled;
    this.bitmap?.clearAll();
    this.notifyUnits(undefined);
    this.filled = 0;
    this.pendingBytes = 0;
    this.dirty = false;
    this.meta.verified = false;
    const fh = this.requireOpen();
    await this.disk('drop', signal, async () => {
      await rm(join(this.dir, BITMAP_FILE), { force: true });
      await fh.truncate(0);
      await fh.truncate(this.size);
      await writeMeta(this.dir, this.meta);
    });
    if (delta) this.onChange?.(this, delta);
  }

  /** Flushes and closes the data file. */
  async close(signal?: AbortSignal): Promise<void> {
    if (this.closed) return;
    if (this.flushTimer !== undefined) this.timers.clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    try {
      await this.flush(signal);
    } finally {
      this.closed = true;
      const fh = this.fh;
      this.fh = undefined;
      await fh?.close();
    }
  }

  private requireBitmap(): Bitmap {
    if (!this.bitmap) throw DfError.internal(`cache ${this.digest}: layout not set (call setLayout first)`);
    return this.bitmap;
  }
  private requireOpen(): FileHandle {
    if (!this.fh || this.closed) throw new DfError('FAILED_PRECONDITION', `cache ${this.digest} is closed`);
    return this.fh;
  }

  private disk<T>(what: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    return bound(
      fn().catch((err) => {
        throw DfError.from(err, `cache ${what} ${this.digest}`);
      }),
      { signal, ms: this.diskTimeoutMs, timers: this.timers, what: `cache ${what} ${this.digest}` },
    );
  }
}
