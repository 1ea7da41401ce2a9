import { realTimers, type Timers } from '../util/timers.js';
import type { FileReader, ReadContext } from './types.js';
import { Priority } from './types.js';
import type { UnitFetcher } from './unit-fetcher.js';

export interface ReadAheadOptions {
  /** First read-ahead window (bytes of file content). Default 256 KiB. */
  minWindowBytes?: number;
  /** The window doubles per issue up to this (bytes). Default 4 MiB. */
  maxWindowBytes?: number;
  /** Read-ahead bytes in flight for this layer, all files together. Default 16 MiB. */
  maxInFlightBytes?: number;
  /** A file read sequentially this many times in a row gets read-ahead. Default 2. */
  minSequentialReads?: number;
  /** A stream with no read for this long (ms) is dropped and its read-ahead cancelled. Default 2000. */
  idleMs?: number;
  /** Files followed at once; the oldest is dropped at the cap. Default 64. */
  maxStreams?: number;
  timers?: Timers;
}

/** One file read front to back (per inode: the FUSE layer has no file handles). */
interface Stream {
  ino: number;
  /** File offset the next sequential read starts at. */
  next: number;
  reads: number;
  window: number;
  /** File offset up to which read-ahead was issued. */
  aheadEnd: number;
  /** Start of the last window issued (file offset). */
  lastWindowStart: number;
  /** Reads of this stream not answered yet (a reader blocked on the network is not idle). */
  pending: number;
  cancel: AbortController;
  idle: unknown;
  /** Tripwire units of this stream (see ReadAhead). */
  holds: Set<number>;
}

/**
 * Reads may arrive slightly out of order (the kernel's own read-ahead runs on several threads): a read this
 * far behind the stream neither ends it nor counts as progress.
 */
const REORDER_SLACK = 128 * 1024;

/**
 * Read-ahead for files read front to back: a FileReader around the layer's reader that watches the reads
 * reaching JS and, once a file has been read sequentially a few times, asks the fetcher for the next window
 * of blocks as one run at Prefetch priority (on-demand reads still go first). The window doubles per issue
 * (256 KiB → 4 MiB); the bytes in flight are bounded per layer. Random reads get none. A stream is cancelled
 * (queued runs dropped, running requests aborted unless a blocked reader joined them) when its file is
 * released, on a non-sequential read, and after `idleMs` without a read.
 *
 * Reads of cached blocks may be served by the C direct-read path and never reach JS, so a reader that
 * moves through a window read-ahead fetched would be invisible until it hits a missing block. To see it in
 * time, each window has one "tripwire": the first block the window fetches at or past its middle is held
 * back from the C path (gate `held`) until a JS read reaches it; that read (a cache hit in JS) issues the
 * next window while the reader still has half a window ahead of it. Held units are handed to C on release
 * (`onRelease`) and when the stream ends.
 */
export class ReadAhead implements FileReader {
  readonly toc: FileReader['toc'];
  private readonly streams = new Map<number, Stream>();
  private readonly held = new Map<number, Stream>();
  private readonly releaseListeners = new Set<(unit: number) => void>();
  private readonly o: Required<Omit<ReadAheadOptions, 'timers'>>;
  private readonly timers: Timers;
  private inFlightBytes = 0;
  /** Read-ahead windows issued and units asked for (tests, metrics). */
  readonly counters = { windows: 0, units: 0, cancelled: 0 };

  constructor(
    private readonly inner: FileReader,
    private readonly fetcher: UnitFetcher,
    opts: ReadAheadOptions = {},
  ) {
    this.toc = inner.toc;
    this.timers = opts.timers ?? realTimers;
    const minWindowBytes = Math.max(4096, opts.minWindowBytes ?? 256 * 1024);
    this.o = {
      minWindowBytes,
      maxWindowBytes: Math.max(minWindowBytes, opts.maxWindowBytes ?? 4 * 1024 * 1024),
      maxInFlightBytes: Math.max(minWindowBytes, opts.maxInFlightBytes ?? 16 * 1024 * 1024),
      minSequentialReads: Math.max(1, opts.minSequentialReads ?? 2),
      idleMs: Math.max(1, opts.idleMs ?? 2000),
      maxStreams: Math.max(1, opts.maxStreams ?? 64),
    };
  }

  /** Read-ahead bytes (stored) requested and not settled yet. */
  get bytesInFlight(): number {
    return this.inFlightBytes;
  }

  async read(
    ino: number,
    offset: number,
    length: number,
    signal?: AbortSignal,
    ctx?: ReadContext,
  ): Promise<Buffer> {
    const s = this.observe(ino, offset, length);
    if (s) s.pending++;
    try {
      // the read asks for its own blocks first (synchronously), then the window goes behind it
      const p = this.inner.read(ino, offset, length, signal, ctx);
      if (s) this.maybeIssue(s);
      return await p;
    } finally {
      if (s) s.pending--;
    }
  }

  /** The file was released (closed): its read-ahead stops. */
  release(ino: number): void {
    const s = this.streams.get(ino);
    if (s) this.end(s);
  }

  /** Stops every stream (the mount goes away). */
  close(): void {
    for (const s of [...this.streams.values()]) this.end(s);
  }

  // ------------------------------------------------------------------ the gate of the C path

  /** Whether the C direct-read path must leave unit `u` to JS for now (a tripwire). */
  isHeld(u: number): boolean {
    return this.held.has(u);
  }

  /** Calls `fn` with each held unit when it is let go; returns the unsubscription. */
  onRelease(fn: (unit: number) => void): () => void {
    this.releaseListeners.add(fn);
    return () => this.releaseListeners.delete(fn);
  }

  private unhold(s: Stream, u: number): void {
    s.holds.delete(u);
    if (this.held.get(u) !== s) return;
    this.held.delete(u);
    for (const fn of this.releaseListeners) fn(u);
  }

  // ------------------------------------------------------------------ streams

  private observe(ino: number, offset: number, length: number): Stream | undefined {
    let size: number;
    let dataOffset: number;
    try {
      const st = this.toc.stat(ino);
      size = st.size;
      dataOffset = st.dataOffset;
    } catch {
      return undefined; // the reader answers the error
    }
    const end = Math.min(size, offset + length);
    let s = this.streams.get(ino);
    const sequential =
      s !== undefined && offset >= s.next - REORDER_SLACK && offset <= Math.max(s.next, s.aheadEnd);
    if (s && !sequential) {
      this.end(s);
      s = undefined;
    }
    if (!s) {
      if (this.streams.size >= this.o.maxStreams) {
        const oldest = this.streams.values().next().value;
        if (oldest) this.end(oldest);
      }
      s = {
        ino,
        next: end,
        reads: 1,
        window: this.o.minWindowBytes,
        aheadEnd: end,
        lastWindowStart: end,
        pending: 0,
        cancel: new AbortController(),
        idle: undefined,
        holds: new Set(),
      };
      this.streams.set(ino, s);
    } else if (end > s.next) {
      s.reads++;
      s.next = end;
      // the reader got here: tripwires it passed go to the C path
      if (s.holds.size) {
        const [, lastBlock] = this.toc.blocksForRange(dataOffset + Math.max(0, end - 1), 1);
        for (const u of [...s.holds]) if (u <= lastBlock) this.unhold(s, u);
      }
    }
    this.armIdle(s);
    return s;
  }

  private maybeIssue(s: Stream): void {
    if (this.streams.get(s.ino) !== s || s.reads < this.o.minSequentialReads) return;
    const st = this.toc.stat(s.ino);
    if (s.aheadEnd >= st.size) return;
    // past the middle of the last window (or beyond what was issued): the next one
    const mid = s.lastWindowStart + (s.aheadEnd - s.lastWindowStart) / 2;
    if (s.next >= mid || s.aheadEnd <= s.next)
      this.issue(s, Math.max(s.aheadEnd, s.next), st.size, st.dataOffset);
  }

  private armIdle(s: Stream): void {
    if (s.idle !== undefined) this.timers.clearTimeout(s.idle);
    s.idle = this.timers.setTimeout(() => {
      s.idle = undefined;
      if (this.streams.get(s.ino) !== s) return;
      if (s.pending > 0) this.armIdle(s);
      else this.end(s);
    }, this.o.idleMs);
  }

  private issue(s: Stream, from: number, size: number, dataOffset: number): void {
    if (from >= size || this.fetcher.closed) return;
    const to = Math.min(size, from + s.window);
    const [first, last] = this.toc.blocksForRange(dataOffset + from, to - from);
    const missing: number[] = [];
    let bytes = 0;
    for (let u = first; u <= last; u++) {
      if (this.fetcher.cache.has(u) || this.fetcher.inFlight(u)) continue;
      missing.push(u);
      bytes += this.toc.blockStoredLength(u);
    }
    if (missing.length && this.inFlightBytes + bytes > this.o.maxInFlightBytes) return; // at the bound: later
    s.lastWindowStart = from;
    s.aheadEnd = to;
    s.window = Math.min(this.o.maxWindowBytes, s.window * 2);
    if (!missing.length) return;
    this.counters.windows++;
    this.counters.units += missing.length;
    this.inFlightBytes += bytes;
    const promises = this.fetcher.ensure(missing, Priority.Prefetch, { signal: s.cancel.signal });
    void Promise.allSettled(promises).then(() => (this.inFlightBytes -= bytes));
    // the tripwire: the first fetched block at or past the window's middle
    const midBlock = this.toc.blocksForRange(dataOffset + from + Math.floor((to - from) / 2), 1)[0];
    const trip = missing.find((u) => u >= midBlock) ?? missing[missing.length - 1]!;
    if (!this.held.has(trip)) {
      this.held.set(trip, s);
      s.holds.add(trip);
    }
  }

  private end(s: Stream): void {
    if (this.streams.get(s.ino) === s) this.streams.delete(s.ino);
    if (s.idle !== undefined) this.timers.clearTimeout(s.idle);
    s.idle = undefined;
    if (s.aheadEnd > s.next) this.counters.cancelled++;
    s.cancel.abort();
    for (const u of [...s.holds]) this.unhold(s, u);
  }
}
