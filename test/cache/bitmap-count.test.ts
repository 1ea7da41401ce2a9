/** Bitmap.countAnd and countAndBitmap (32 bits at a time) count exactly what a bit-by-bit count does. */
import { describe, expect, it } from 'vitest';
import { Bitmap } from '../../src/cache/bitmap.js';

function naive(a: Uint8Array, b: Uint8Array): number {
  let c = 0;
  for (let i = 0; i < Math.min(a.length, b.length); i++)
    for (let k = 0; k < 8; k++) if (a[i]! & b[i]! & (1 << k)) c++;
  return c;
}

describe('Bitmap.countAnd', () => {
  it('matches a bit-by-bit count for any length, density and alignment', () => {
    let seed = 12345;
    const rand = () => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32;
    for (let trial = 0; trial < 400; trial++) {
      const units = 1 + Math.floor(rand() * 3000);
      const density = rand();
      const a = new Bitmap(units);
      for (let u = 0; u < units; u++) if (rand() < density) a.set(u);
      // the other side: aligned, or a view at an odd offset (the byte loop), or shorter
      const bytes = Math.ceil(units / 8);
      const offset = trial % 3 === 1 ? 1 + Math.floor(rand() * 3) : 0;
      const len = trial % 3 === 2 ? Math.floor(rand() * bytes) : bytes;
      const raw = new Uint8Array(offset + len);
      for (let i = 0; i < raw.length; i++) raw[i] = rand() < density ? Math.floor(rand() * 256) : 0xff;
      const other = raw.subarray(offset);
      expect(a.countAnd(other)).toBe(naive(a.bits, other));
      const o = Bitmap.fromBits(other, units);
      expect(a.countAndBitmap(o)).toBe(naive(a.bits, o.bits));
    }
  });

  it('counts all-ones words (the popcount of 0xffffffff)', () => {
    const a = new Bitmap(64 * 8);
    for (let u = 0; u < a.size; u++) a.set(u);
    expect(a.countAnd(new Uint8Array(64).fill(0xff))).toBe(512);
    expect(a.countAndBitmap(a)).toBe(512);
    // bits past the size never count, whatever the raw bytes held
    const odd = Bitmap.fromBits(new Uint8Array(2).fill(0xff), 13);
    expect(odd.countAndBitmap(odd)).toBe(13);
  });
});
