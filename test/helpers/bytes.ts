/**
 * Flips the bits of `mask` in byte `i` of `buf`, in place. Throws when `i` is outside the buffer, so that a
 * corruption test cannot pass by corrupting nothing.
 */
export function flipBits(buf: Uint8Array, i: number, mask = 0xff): void {
  if (!Number.isInteger(i) || i < 0 || i >= buf.length)
    throw new RangeError(`flipBits: byte ${i} is outside the ${buf.length}-byte buffer`);
  buf[i] = buf[i]! ^ mask;
}
