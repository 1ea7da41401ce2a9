import { decodeStoredBlock } from '../blob/block-codec.js';
import { DfbReader } from '../blob/reader.js';
import type { Toc } from '../blob/toc.js';
import { EntryType } from '../blob/types.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { bound, childSignal, realTimers, type Timers } from '../util/timers.js';
import type { BlockMemoryCache } from './block-memory-cache.js';
import type { FetchStats } from './fetch-stats.js';
import { Priority, type FileReader, type ReadContext } from './types.js';
import type { UnitFetcher } from './unit-fetcher.js';

export interface BlobReaderOptions {
  /** A read resolves or rejects within this time (ms). Default 30 s. */
  readTimeoutMs?: number;
  /** Check the SHA-256 of blocks read from the disk cache (detects bit rot). Default true. */
  verifyCachedReads?: boolean;
}

export interface BlobReaderInit {
  fetcher: UnitFetcher;
  memoryCache: BlockMemoryCache;
  /** Called after every read (the layer starts its background fill on the first one). */
  onRead?: () => void;
  timers?: Timers;
  logger?: Logger;
  options?: BlobReaderOptions;
}

/**
 * Serves file reads of one blob: memory LRU → disk cache → the unit fetcher (at Blocked priority), then
 * decodes the blocks. A read resolves or rejects within readTimeoutMs; it never hangs.
 */
export class BlobReader implements FileReader {
  readonly toc: Toc;
  private readonly fetcher: UnitFetcher;
  private readonly stats: FetchStats;
  private readonly memory: BlockMemoryCache;
  private readonly memoryId: number;
  private readonly onRead: (() => void) | undefined;
  private readonly timers: Timers;
  private readonly logger: Logger;
  private readonly readTimeoutMs: number;
  private readonly verifyCachedReads: boolean;

  constructor(init: BlobReaderInit) {
    this.fetcher = init.fetcher;
    this.toc = init.fetcher.toc;
    this.stats = init.fetcher.stats;
    this.memory = init.memoryCache;
    this.memoryId = this.memory.blobId(init.fetcher.blob.digest);
    this.onRead = init.onRead;
    this.timers = init.timers ?? realTimers;
    this.logger = init.logger ?? silentLogger;
    this.readTimeoutMs = init.options?.readTimeoutMs ?? 30_000;
    this.verifyCachedReads = init.options?.verifyCachedReads ?? true;
  }

  private get digest(): string {
    return this.fetcher.blob.digest;
  }

  async read(
    ino: number,
    offset: number,
    length: number,
    signal?: AbortSignal,
    ctx?: ReadContext,
  ): Promise<Buffer> {
    const st = this.toc.stat(ino);
    if (st.type !== EntryType.File) throw DfError.invalidArgument(`inode ${ino} is not a regular file`);
    if (!(offset >= 0) || !(length >= 0)) throw DfError.invalidArgument(`bad read range ${offset}+${length}`);
    const n = Math.max(0, Math.min(length, st.size - offset));
    if (n === 0) return Buffer.alloc(0);
    if (this.fetcher.closed) throw new DfError('FAILED_PRECONDITION', `layer ${this.digest} is closed`);
    const start = st.dataOffset + offset;
    const [first, last] = this.toc.blocksForRange(start, n);
    this.fetcher.cache.touch();
    const deadline = childSignal(signal, this.readTimeoutMs, this.timers, `read of ${this.digest}`);
    try {
      return await bound(this.readBlocks(first, last, start, n, deadline.signal, ctx), {
        signal: deadline.signal,
        what: 'read',
      });
    } catch (err) {
      const e = DfError.from(err, `read ${this.digest}`);
      if (e.code === 'TIMEOUT') this.stats.readTimeouts++;
      this.stats.readErrors++;
      throw e;
    } finally {
      deadline.dispose();
      this.onRead?.();
    }
  }

  private async readBlocks(
    first: number,
    last: number,
    start: number,
    n: number,
    signal: AbortSignal,
    ctx?: ReadContext,
  ): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n);
    const put = (i: number, data: Buffer) => {
      const blockStart = this.toc.blockStreamOffset(i);
      const from = Math.max(start, blockStart) - blockStart;
      const to = Math.min(start + n, blockStart + data.length) - blockStart;
      data.copy(out, blockStart + from - start, from, to);
    };
    const waits: Promise<void>[] = [];
    let missing: number[] | undefined;
    for (let i = first; i <= last; i++) {
      const m = this.memory.get(this.memoryId, i);
      if (m) {
        this.stats.served('memory', 1, m.length);
        put(i, m);
      } else if (this.fetcher.cache.has(i) && !this.fetcher.inFlight(i)) {
        waits.push(this.fromCache(i, signal).then((d) => put(i, d)));
      } else (missing ??= []).push(i);
    }
    if (missing) {
      const units = missing;
      const t0 = this.timers.now();
      const stored = this.fetcher.ensure(units, Priority.Blocked);
      const remote = Promise.all(
        stored.map((p, k) => {
          const unit = units[k]!;
          return p.then((s) => put(unit, this.decode(unit, s)));
        }),
      ).finally(() => {
        const ms = this.timers.now() - t0;
        this.stats.recordBlocked(ms);
        if (ctx) {
          ctx.blocked = true;
          ctx.blockedMs += ms;
        }
      });
      waits.push(remote.then(() => {}));
    }
    await bound(Promise.all(waits), { signal, what: 'read' });
    return out;
  }

  /** A block from the disk cache; a block that fails verification is dropped and fetched again. */
  private async fromCache(i: number, signal: AbortSignal): Promise<Buffer> {
    const off = this.toc.blockOffset(i);
    const len = this.toc.blockStoredLength(i);
    const stored = await this.fetcher.cache.read(off, len, signal);
    if (this.verifyCachedReads) {
      try {
        DfbReader.checkStoredBlock(this.toc, i, stored);
      } catch {
        this.stats.recordVerifyFailure('cache');
        this.logger.warn({ digest: this.digest, block: i }, 'cached block failed verification; refetching');
        this.fetcher.cache.invalidate(i, len);
        const [again] = this.fetcher.ensure([i], Priority.Blocked);
        if (!again) throw DfError.internal(`no fetch for block ${i}`);
        return this.decode(i, await again);
      }
    }
    this.stats.served('cache', 1, len);
    return this.decode(i, stored);
  }

  private decode(i: number, stored: Buffer): Buffer {
    const m = this.memory.get(this.memoryId, i);
    if (m) return m;
    let d = decodeStoredBlock(stored, this.toc.blockCodec(i), this.toc.blockLength(i), `DFB block ${i}`);
    // a raw block is a view into its whole range request: do not pin that in the LRU
    if (d.buffer.byteLength > d.length * 2) d = Buffer.from(d);
    this.memory.set(this.memoryId, i, d);
    return d;
  }
}
