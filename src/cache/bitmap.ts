import { createHash } from 'node:crypto';
import { DfError } from '../errors.js';

/**
 * A fixed-size set of unit indexes (blocks of a blob, plus the TOC unit), with a self-checking
 * on-disk encoding:
 *
 *   0  magic[4] "DFBM"   4 u32 version (1)   8 u32 units   12 u32 reserved
 *  16  u64 filledBytes (sum of the lengths of the units present)
 *  24  bits[ceil(units/8)] (bit i = byte i>>3, mask 1<<(i&7))
 *  ..  sha256[32] of everything before it
 *
 * A torn or garbled file fails the checksum and decodes to nothing (the caller starts empty).
 */
export class Bitmap {
  readonly bits: Uint8Array;
  /** The same memory as 32-bit words (the bytes past `bits`, up to a multiple of 4, stay zero). */
  private readonly words: Uint32Array;
  private count = 0;

  constructor(readonly size: number) {
    const bytes = Math.ceil(size / 8);
    const buf = new ArrayBuffer(Math.ceil(bytes / 4) * 4);
    this.bits = new Uint8Array(buf, 0, bytes);
    this.words = new Uint32Array(buf);
  }

  /** Whether bit i is set; false for any i outside 0..size-1. */
  has(i: number): boolean {
    return i >= 0 && i < this.size && ((this.bits[i >>> 3] ?? 0) & (1 << (i & 7))) !== 0;
  }

  /** Sets bit i; false when it was already set. */
  set(i: number): boolean {
    const m = 1 << (i & 7);
    const b = this.byteOf(i);
    if (b & m) return false;
    this.bits[i >>> 3] = b | m;
    this.count++;
    return true;
  }

  /** Clears bit i; false when it was not set. */
  clear(i: number): boolean {
    const m = 1 << (i & 7);
    const b = this.byteOf(i);
    if (!(b & m)) return false;
    this.bits[i >>> 3] = b & ~m;
    this.count--;
    return true;
  }

  private byteOf(i: number): number {
    const b = Number.isInteger(i) && i >= 0 && i < this.size ? this.bits[i >>> 3] : undefined;
    if (b === undefined) throw DfError.invalidArgument(`bitmap: unit ${i} is outside 0..${this.size - 1}`);
    return b;
  }

  clearAll(): void {
    this.bits.fill(0);
    this.count = 0;
  }

  get present(): number {
    return this.count;
  }

  get full(): boolean {
    return this.count === this.size;
  }

  /** First unset index >= from, or -1. */
  nextClear(from: number): number {
    for (let i = from; i < this.size; i++) {
      if (this.bits[i >>> 3] === 0xff && (i & 7) === 0) {
        i += 7;
        continue;
      }
      if (!this.has(i)) return i;
    }
    return -1;
  }

  clone(): Bitmap {
    const b = new Bitmap(this.size);
    b.bits.set(this.bits);
    b.count = this.count;
    return b;
  }

  /** Units set both here and in `other` (raw bits of the same layout; extra bytes are ignored). */
  countAnd(other: Uint8Array): number {
    let c = 0;
    const n = Math.min(this.bits.length, other.length);
    for (let i = 0; i < n; i++) c += POPCOUNT[this.bits[i]! & other[i]!]!;
    return c;
  }

  /**
   * Units set both here and in `other`, 32 bits at a time (the tracker scores every holder of a blob this
   * way on each lookup).
   */
  countAndBitmap(other: Bitmap): number {
    const a = this.words;
    const b = other.words;
    const n = Math.min(a.length, b.length);
    let c = 0;
    for (let w = 0; w < n; w++) {
      let v = a[w]! & b[w]!;
      if (v === 0) continue;
      v -= (v >>> 1) & 0x55555555;
      v = (v & 0x33333333) + ((v >>> 2) & 0x33333333);
      c += Math.imul((v + (v >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
    }
    return c;
  }

  /** A bitmap of `size` units from raw bits (bit i = byte i>>3, mask 1<<(i&7)); bits past `size` ignored. */
  static fromBits(bytes: Uint8Array, size: number): Bitmap {
    const b = new Bitmap(size);
    const n = Math.min(bytes.length, b.bits.length);
    b.bits.set(bytes.subarray(0, n));
    if (n === b.bits.length && size % 8) b.bits[n - 1]! &= (1 << (size % 8)) - 1;
    let c = 0;
    for (let i = 0; i < n; i++) c += POPCOUNT[b.bits[i]!]!;
    b.count = c;
    return b;
  }

  encode(filledBytes: number): Buffer {
    const n = this.bits.length;
    const out = Buffer.alloc(24 + n + 32);
    out.write('DFBM', 0, 'latin1');
    out.writeUInt32LE(1, 4);
    out.writeUInt32LE(this.size, 8);
    out.writeBigUInt64LE(BigInt(filledBytes), 16);
    out.set(this.bits, 24);
    createHash('sha256')
      .update(out.subarray(0, 24 + n))
      .digest()
      .copy(out, 24 + n);
    return out;
  }

  /** Decodes an encoded bitmap of `size` units; undefined when the bytes are not exactly that. */
  static decode(buf: Buffer, size: number): { bitmap: Bitmap; filledBytes: number } | undefined {
    const n = Math.ceil(size / 8);
    if (buf.length !== 24 + n + 32) return undefined;
    if (buf.toString('latin1', 0, 4) !== 'DFBM' || buf.readUInt32LE(4) !== 1) return undefined;
    if (buf.readUInt32LE(8) !== size) return undefined;
    const sum = createHash('sha256')
      .update(buf.subarray(0, 24 + n))
      .digest();
    if (!sum.equals(buf.subarray(24 + n))) return undefined;
    const filled = buf.readBigUInt64LE(16);
    if (filled > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
    // bits past `size` must be zero
    if (size % 8 && buf[24 + n - 1]! >> (size % 8)) return undefined;
    return { bitmap: Bitmap.fromBits(buf.subarray(24, 24 + n), size), filledBytes: Number(filled) };
  }

  /** Header fields only (size and filled bytes), for status without decoding the whole file. */
  static units(buf: Buffer): number | undefined {
    return buf.length >= 24 && buf.toString('latin1', 0, 4) === 'DFBM' ? buf.readUInt32LE(8) : undefined;
  }
}

const POPCOUNT = new Uint8Array(256);
for (let i = 0; i < 256; i++) POPCOUNT[i] = (i & 1) + POPCOUNT[i >> 1]!;
