import { createHash } from 'node:crypto';
import { deflateSync, inflateSync } from 'node:zlib';
import { DfError } from '../../src/errors.js';
import { decodeFooter, encodeFooter, FOOTER_SIZE } from '../../src/blob/footer.js';
import { TocCodec, type RangeReader } from '../../src/blob/types.js';

/** RangeReader over a Buffer, with the same contract as FileRangeReader. */
export class BufferRangeReader implements RangeReader {
  reads = 0;
  constructor(readonly buf: Buffer) {}
  get size(): number {
    return this.buf.length;
  }
  async read(offset: number, length: number): Promise<Buffer> {
    this.reads++;
    if (!(offset >= 0) || !(length >= 0) || offset + length > this.buf.length) {
      throw DfError.corrupt(`read past the end: ${offset}+${length} > ${this.buf.length}`);
    }
    return Buffer.from(this.buf.subarray(offset, offset + length));
  }
  async readTail(length: number): Promise<{ data: Buffer; size: number }> {
    const n = Math.min(length, this.buf.length);
    return { data: await this.read(this.buf.length - n, n), size: this.buf.length };
  }
}

export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

/** Split a blob into its parts using the footer. */
export function parts(blob: Buffer): { data: Buffer; storedToc: Buffer; toc: Buffer; footer: Buffer } {
  const f = decodeFooter(blob.subarray(blob.length - FOOTER_SIZE), blob.length);
  const storedToc = blob.subarray(f.tocOffset, f.tocOffset + f.tocStoredLength);
  return {
    data: blob.subarray(0, f.tocOffset),
    storedToc,
    toc: inflateSync(storedToc),
    footer: blob.subarray(blob.length - FOOTER_SIZE),
  };
}

/** Re-assembles a blob around a (possibly mutated) uncompressed TOC, with a consistent footer and digest. */
export function withToc(blob: Buffer, toc: Buffer, blockSize = 65536): Buffer {
  const { data } = parts(blob);
  const stored = deflateSync(toc);
  const footer = encodeFooter({
    flags: 0,
    blockSize,
    tocCodec: TocCodec.Zlib,
    tocOffset: data.length,
    tocStoredLength: stored.length,
    tocLength: toc.length,
    tocSha256: createHash('sha256').update(stored).digest(),
  });
  return Buffer.concat([data, stored, footer]);
}

/** Runs fn, failing (rejecting) if it takes longer than ms. */
export async function bounded<T>(ms: number, what: string, fn: () => Promise<T>): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      fn(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`hang: ${what} did not finish in ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
