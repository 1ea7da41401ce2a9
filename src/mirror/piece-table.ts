import { createHash, type Hash } from 'node:crypto';
import { Bitmap } from '../cache/bitmap.js';
import { DfError } from '../errors.js';
import type { Units } from '../p2p/unit-layout.js';

/** The piece size of a raw file whose size is not known before it is fetched (bytes). */
export const PIECE_SIZE = 4 * 1024 * 1024;

/** Pieces of a file of known size: at most about this many, each 512 KiB..16 MiB (a power of two). */
const TARGET_PIECES = 4096;
const SMALLEST_PIECE = 512 * 1024;

/**
 * The piece size a seed cuts a raw file of `size` bytes into: 512 KiB up to 2 GiB, then the power of two that
 * keeps about 4,096 pieces, at most 16 MiB. Small pieces keep cut-through quick (a piece is served once all
 * its bytes are in: the first bytes reach a node one piece after they reach the seed, and a node passes a
 * piece on once it has all of it); the cap keeps tables small (a 1 TiB file: 65,536 pieces, a 4.4 MB table).
 * 512 KiB rather than 1 MiB: bench/mirror's fetch at N = 8 / 16 went from ~39 / ~41 s to ~34 / ~37 s (nodes
 * start passing pieces on sooner); 256 KiB was as fast at N = 8 and slower at N = 16, where the two cores
 * are busy and each piece costs a node CPU (bench/README.md, mirror).
 */
export function pieceSizeFor(size: number): number {
  let p = SMALLEST_PIECE;
  while (p < MAX_PIECE && p * TARGET_PIECES < size) p *= 2;
  return p;
}

/** Piece sizes a node accepts from a seed's table. */
const MIN_PIECE = 64 * 1024;
const MAX_PIECE = 16 * 1024 * 1024;

/** A table larger than this is refused (a 1 TiB file at 4 MiB pieces takes about 17 MB). */
export const MAX_TABLE_BYTES = 32 * 1024 * 1024;

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const HEX = /^[0-9a-f]{64}$/;

/**
 * The piece table of a raw file (any file moved by `dfnode get` or the registry mirror, which has no DFB
 * TOC): its content digest, its size and the SHA-256 of each fixed-size piece. A seed computes it once
 * while fetching the file from the origin; nodes verify every piece they receive against it and the whole
 * file against `digest`.
 */
export interface PieceTable {
  /** sha256:hex of the whole file (also its cache key). */
  digest: string;
  size: number;
  pieceSize: number;
  /**
   * SHA-256 of each piece (32 bytes), in order. While `filling`, only the first pieces (those the seed has
   * received and hashed so far); the node learns the others from the seed's piece answers or a newer table.
   */
  pieces: Buffer[];
  /**
   * The seed is still fetching the file (cut-through): `digest` is the one the node asked for, checked by
   * the seed only at the end (the seed withholds the last piece until it matches; the node checks the whole
   * file too), and `pieces` is a prefix.
   */
  filling?: boolean;
}

export function pieceCount(size: number, pieceSize: number): number {
  return Math.ceil(size / pieceSize);
}

/** A bitmap of `units` bits (bit u = byte u>>3, mask 1<<(u&7), as the tracker's) with the first `n` set. */
export function prefixBits(units: number, n: number): Uint8Array {
  const b = new Bitmap(units);
  for (let u = 0; u < Math.min(n, units); u++) b.set(u);
  return b.bits;
}

/** The pieces of a file as the cache bitmap, the tracker and the peer sources count units. */
export class PieceLayout implements Units {
  readonly units: number;

  constructor(
    readonly size: number,
    readonly pieceSize: number,
  ) {
    this.units = pieceCount(size, pieceSize);
  }

  offset(u: number): number {
    return Math.min(u * this.pieceSize, this.size);
  }

  length(u: number): number {
    return this.offset(u + 1) - this.offset(u);
  }

  unitsFor(offset: number, length: number): [number, number] | undefined {
    if (!(offset >= 0) || !(length > 0) || offset + length > this.size) return undefined;
    return [Math.floor(offset / this.pieceSize), Math.floor((offset + length - 1) / this.pieceSize)];
  }

  /** The piece that is exactly [offset, offset+length), else undefined. */
  pieceAt(offset: number, length: number): number | undefined {
    const r = this.unitsFor(offset, length);
    if (!r || r[0] !== r[1] || offset !== this.offset(r[0]) || length !== this.length(r[0])) return undefined;
    return r[0];
  }

  /**
   * The cache layout that gives the bitmap one unit per piece: BlobCache counts blocks 0..n-1 plus a last
   * unit [tocOffset, size), which here is simply the last piece.
   */
  get cacheLayout(): { blockCount: number; tocOffset: number } {
    return { blockCount: this.units - 1, tocOffset: this.offset(this.units - 1) };
  }
}

/** The table's wire form (JSON with hex digests; the same bytes every time for the same table). */
export function encodeTable(t: PieceTable): Buffer {
  return Buffer.from(
    JSON.stringify({
      digest: t.digest,
      size: t.size,
      pieceSize: t.pieceSize,
      pieces: t.pieces.map((p) => p.toString('hex')),
      ...(t.filling ? { filling: true } : {}),
    }),
  );
}

/** sha256 of the table's wire form: printed by `dfnode get` so that a table can be pinned and compared. */
export function tableDigest(t: PieceTable): string {
  return 'sha256:' + createHash('sha256').update(encodeTable(t)).digest('hex');
}

/**
 * Parses and checks a table from a seed: well formed, piece count matching size and piece size, and
 * (when the caller knows it) the file digest it expects. Throws CORRUPT (or DIGEST_MISMATCH) otherwise.
 */
export function decodeTable(buf: Buffer, expectedDigest?: string): PieceTable {
  if (buf.length > MAX_TABLE_BYTES) throw DfError.corrupt(`piece table of ${buf.length} bytes is too large`);
  let j: unknown;
  try {
    j = JSON.parse(buf.toString('utf8'));
  } catch {
    throw DfError.corrupt('piece table is not JSON');
  }
  const o = j as {
    digest?: unknown;
    size?: unknown;
    pieceSize?: unknown;
    pieces?: unknown;
    filling?: unknown;
  };
  const bad = (why: string) => DfError.corrupt(`piece table: ${why}`);
  if (typeof o !== 'object' || o === null) throw bad('not an object');
  if (typeof o.digest !== 'string' || !DIGEST.test(o.digest)) throw bad('digest is not sha256:<64 hex>');
  if (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size < 1) throw bad('bad size');
  if (
    typeof o.pieceSize !== 'number' ||
    !Number.isSafeInteger(o.pieceSize) ||
    o.pieceSize < MIN_PIECE ||
    o.pieceSize > MAX_PIECE
  )
    throw bad(`piece size must be ${MIN_PIECE}..${MAX_PIECE}`);
  const filling = o.filling === true;
  const count = pieceCount(o.size, o.pieceSize);
  // a table still filling lists the pieces hashed so far, never the last one (withheld until the digest matches)
  if (!Array.isArray(o.pieces) || (filling ? o.pieces.length >= count : o.pieces.length !== count))
    throw bad(filling ? `at most ${count - 1} pieces while filling` : `expected ${count} pieces`);
  const pieces = o.pieces.map((p: unknown, i) => {
    if (typeof p !== 'string' || !HEX.test(p)) throw bad(`piece ${i} is not 64 hex digits`);
    return Buffer.from(p, 'hex');
  });
  if (expectedDigest !== undefined && o.digest !== expectedDigest)
    throw DfError.digestMismatch('piece table of the file (from the seed)', expectedDigest, o.digest);
  return { digest: o.digest, size: o.size, pieceSize: o.pieceSize, pieces, ...(filling ? { filling } : {}) };
}

/**
 * Adds to a filling `table` the piece digests a newer answer of the seed lists (and ends `filling` when that
 * answer is complete). Throws CORRUPT when the answer is of another file or contradicts a known piece.
 */
export function mergeTable(table: PieceTable, newer: PieceTable): void {
  if (newer.digest !== table.digest || newer.size !== table.size || newer.pieceSize !== table.pieceSize)
    throw DfError.corrupt(`the seed's newer piece table of ${table.digest} is of another file`);
  newer.pieces.forEach((p, u) => {
    const had = table.pieces[u];
    if (had && !had.equals(p))
      throw DfError.corrupt(`the seed's newer piece table of ${table.digest} changes piece ${u}`);
  });
  newer.pieces.forEach((p, u) => (table.pieces[u] = p));
  if (!newer.filling) delete table.filling;
}

/**
 * Checks piece `u`'s bytes against the table (or, for a piece a filling table does not list yet, against
 * `claimed`: the digest the seed sent with it); throws CORRUPT naming the piece when they differ.
 */
export function verifyPiece(t: PieceTable, u: number, data: Buffer, claimed?: Buffer): void {
  const want = t.pieces[u] ?? claimed;
  const layoutLength = Math.min(t.pieceSize, t.size - u * t.pieceSize);
  if (!want || data.length !== layoutLength)
    throw DfError.corrupt(`piece ${u} of ${t.digest}: ${data.length} bytes, expected ${layoutLength}`);
  if (!createHash('sha256').update(data).digest().equals(want))
    throw DfError.corrupt(`piece ${u} of ${t.digest} does not match its SHA-256 in the piece table`);
}

/**
 * Checks piece `u` as a node receives it: against the table, or, for a piece a filling table does not list
 * yet, against `claimed` (the digest the seed sent with it), which the table then lists. Throws CORRUPT when
 * neither is known or the bytes differ; the table is unchanged then.
 */
export function acceptPiece(t: PieceTable, u: number, data: Buffer, claimed?: Buffer): void {
  if (!t.pieces[u] && !claimed)
    throw DfError.corrupt(`piece ${u} of ${t.digest}: the seed sent no digest with it`);
  verifyPiece(t, u, data, claimed);
  t.pieces[u] ??= claimed!;
}

/**
 * Builds a piece table from a file's bytes as they stream by (a seed reading the origin): per-piece and
 * whole-file hashes, nothing buffered.
 */
export class PieceHasher {
  private readonly whole = createHash('sha256');
  private piece: Hash = createHash('sha256');
  private inPiece = 0;
  private total = 0;
  private readonly pieces: Buffer[] = [];

  constructor(readonly pieceSize = PIECE_SIZE) {}

  get bytes(): number {
    return this.total;
  }

  /** SHA-256 of the pieces completed so far, in order (the array grows as bytes are added). */
  get completed(): readonly Buffer[] {
    return this.pieces;
  }

  update(chunk: Buffer): void {
    this.whole.update(chunk);
    this.total += chunk.length;
    let at = 0;
    while (at < chunk.length) {
      const n = Math.min(chunk.length - at, this.pieceSize - this.inPiece);
      this.piece.update(chunk.subarray(at, at + n));
      this.inPiece += n;
      at += n;
      if (this.inPiece === this.pieceSize) {
        this.pieces.push(this.piece.digest());
        this.piece = createHash('sha256');
        this.inPiece = 0;
      }
    }
  }

  finish(): PieceTable {
    if (this.inPiece > 0) this.pieces.push(this.piece.digest());
    return {
      digest: 'sha256:' + this.whole.digest('hex'),
      size: this.total,
      pieceSize: this.pieceSize,
      pieces: this.pieces,
    };
  }
}
