import type { FileHandle } from 'node:fs/promises';
import { DfError } from '../errors.js';
import { sourceUnavailable } from '../fetch/types.js';
import type { ServedBlob } from '../p2p/block-server.js';
import { PieceLayout, type PieceHasher, type PieceTable } from './piece-table.js';

/**
 * What a read of a file whose fetch failed throws: the origin's file is not the one named (DIGEST_MISMATCH,
 * CORRUPT: final), or the fetch failed on the way (a source that has nothing now: the node asks again, and
 * its next table request starts a new fetch).
 */
export function failedRead(err: unknown): DfError {
  const e = DfError.from(err);
  if (e.code === 'DIGEST_MISMATCH' || e.code === 'CORRUPT') return e;
  return sourceUnavailable(`the seed's fetch of the file failed: ${e.message}; ask again`);
}

/** A read waiting for its piece is told at least this often that the fetch moves (ms). */
const ALIVE_MS = 1000;

/**
 * A raw file a seed is still fetching from its origin into a temporary file, served piece by piece as it
 * arrives (cut-through): a piece is readable once every byte of it is written and hashed, its SHA-256
 * known; a read of a piece not there yet waits for it (until the fetch fails, or the reader's signal
 * aborts). The last piece waits for the end of the fetch and the check of the whole file's digest, so a
 * node never completes a file the origin lied about. The fetch (SeedFiles) drives it: `progress` after each
 * chunk written, then `complete` or `fail`, then `close` before the temporary file goes.
 */
export class FillingFile {
  readonly layout: PieceLayout;
  /** Pieces readable now. */
  private ready = 0;
  private failure: unknown;
  private closed = false;
  private readonly waiters = new Set<() => void>();
  private active = 0;
  private drained: (() => void) | undefined;
  private lastWake = 0;

  constructor(
    /** The digest the node named: checked by the fetch at the end, not yet. */
    readonly digest: string,
    readonly size: number,
    private readonly fh: FileHandle,
    private readonly hasher: PieceHasher,
  ) {
    this.layout = new PieceLayout(size, hasher.pieceSize);
  }

  /**
   * The fetch wrote (and hashed) more bytes: the pieces they complete become readable, not the last. Waiting
   * reads are also told at least every ALIVE_MS that the file moves (their request is not stalled).
   */
  progress(): void {
    const n = Math.min(this.hasher.completed.length, this.layout.units - 1);
    const now = Date.now();
    if (n <= this.ready && now - this.lastWake < ALIVE_MS) return;
    this.ready = Math.max(this.ready, n);
    this.wake();
  }

  /** The whole file arrived and matches `digest`: every piece is readable. */
  complete(): void {
    this.ready = this.layout.units;
    this.wake();
  }

  /** The fetch failed: every waiting and later read fails with `err`. */
  fail(err: unknown): void {
    this.failure ??= err;
    this.wake();
  }

  /** Pieces readable now (the first ones). */
  get readyPieces(): number {
    return this.ready;
  }

  /** The table so far: the pieces readable now, marked filling. */
  table(): PieceTable {
    return {
      digest: this.digest,
      size: this.size,
      pieceSize: this.layout.pieceSize,
      pieces: this.hasher.completed.slice(0, Math.min(this.ready, this.layout.units - 1)),
      filling: true,
    };
  }

  /** SHA-256 (hex) of the piece that is exactly [offset, offset+length), when it is readable. */
  pieceDigest(offset: number, length: number): string | undefined {
    const u = this.layout.pieceAt(offset, length);
    return u !== undefined && u < this.ready ? this.hasher.completed[u]?.toString('hex') : undefined;
  }

  /**
   * Bytes [offset, offset+length) once the pieces under them are readable; undefined when the range is not
   * in the file or the temporary file is closed (the file is then held in the cache: ask SeedFiles again).
   */
  async read(
    offset: number,
    length: number,
    signal: AbortSignal,
    alive?: () => void,
  ): Promise<Buffer | undefined> {
    if (!this.layout.unitsFor(offset, length)) return undefined;
    await this.whenReadable(offset, length, signal, alive);
    if (this.closed) return undefined;
    this.active++;
    try {
      const buf = Buffer.allocUnsafe(length);
      const { bytesRead } = await this.fh.read(buf, 0, length, offset);
      if (bytesRead !== length) throw DfError.internal(`seed temp file of ${this.digest} is short`);
      return buf;
    } finally {
      if (--this.active === 0) this.drained?.();
    }
  }

  /**
   * Settles once the pieces under [offset, offset+length) are readable or the temporary file is closed (a
   * read then goes to the cache); rejects when the fetch failed or `signal` aborts. A range outside the
   * file settles at once (its read answers undefined).
   */
  async whenReadable(offset: number, length: number, signal: AbortSignal, alive?: () => void): Promise<void> {
    const r = this.layout.unitsFor(offset, length);
    if (!r) return;
    for (;;) {
      if (this.failure !== undefined) throw failedRead(this.failure);
      if (this.ready > r[1] || this.closed) return;
      signal.throwIfAborted();
      alive?.();
      await new Promise<void>((resolve) => {
        const done = () => {
          this.waiters.delete(done);
          signal.removeEventListener('abort', done);
          resolve();
        };
        this.waiters.add(done);
        signal.addEventListener('abort', done, { once: true });
      });
    }
  }

  /** A ServedBlob of the file while it fills: reads wait for their pieces, each piece's digest is told. */
  served(after: () => ServedBlob | undefined): ServedBlob & { readonly layout: PieceLayout } {
    return {
      size: this.size,
      layout: this.layout,
      ready: (offset, length, signal, hint) => this.whenReadable(offset, length, signal, hint?.alive),
      read: async (offset, length, signal, hint) =>
        (await this.read(offset, length, signal, hint?.alive)) ?? after()?.read(offset, length, signal),
      pieceDigest: (offset, length) => this.pieceDigest(offset, length),
    };
  }

  /** No more reads of the temporary file: waiting reads go to `after`; resolves when none is reading. */
  async close(): Promise<void> {
    this.closed = true;
    this.wake();
    if (this.active > 0) await new Promise<void>((r) => (this.drained = r));
  }

  private wake(): void {
    this.lastWake = Date.now();
    for (const w of [...this.waiters]) w();
  }
}
