import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ContentKey } from '../../src/blob/content-key.js';
import { convertAddon } from '../../src/blob/native-codec.js';
import { DfbReader } from '../../src/blob/reader.js';
import { EntryType } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import { ensureNativeAddon } from '../../native/build-addon.js';
import { base, chunks, pseudoRandom } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { BufferRangeReader } from './util.js';

const keyOf = (b: Buffer): string => {
  const k = new ContentKey();
  k.update(b);
  return k.key(b.length);
};

/**
 * Another content of the same size and the same CRC-64 as `a` (CRC is affine over GF(2): flip a set of bits
 * of the first 16 bytes whose CRC differences cancel out, found by Gaussian elimination).
 */
function crcCollision(a: Buffer): Buffer {
  const native = convertAddon()!;
  const crc = (b: Buffer) => {
    const s = new BigUint64Array(1);
    native.crc64(s, b);
    return s[0]!;
  };
  const c0 = crc(a);
  const basis = new Map<number, { v: bigint; combo: bigint }>(); // pivot bit -> reduced vector
  for (let i = 0; i < 128; i++) {
    const t = Buffer.from(a);
    t[i >> 3]! ^= 1 << (i & 7);
    let v = crc(t) ^ c0;
    let combo = 1n << BigInt(i);
    while (v) {
      const pivot = 63 - clz64(v);
      const row = basis.get(pivot);
      if (!row) break;
      v ^= row.v;
      combo ^= row.combo;
    }
    if (!v) {
      const out = Buffer.from(a);
      for (let j = 0; j < 128; j++) if ((combo >> BigInt(j)) & 1n) out[j >> 3]! ^= 1 << (j & 7);
      return out;
    }
    basis.set(63 - clz64(v), { v, combo });
  }
  throw new Error('no collision found');
}

function clz64(v: bigint): number {
  let n = 0;
  for (let bit = 63n; bit >= 0n && !((v >> bit) & 1n); bit--) n++;
  return n;
}

describe('writer dedup (size + CRC-64 key, byte-for-byte check)', () => {
  it('never shares an extent between different contents whose keys collide, and dedups equal ones', async () => {
    ensureNativeAddon();
    if (!convertAddon())
      throw new Error('the converter addon is needed for this test (npm run build:native)');
    const a = pseudoRandom(100_000, 7, true);
    const b = crcCollision(a);
    expect(b.equals(a)).toBe(false);
    expect(keyOf(b)).toBe(keyOf(a)); // the test really exercises a key collision
    const far = pseudoRandom(6 << 20, 8, false); // pushes `a` out of the batch being filled: read back from the file
    const big = pseudoRandom((5 << 20) + 3, 9, true); // spooled contents (> 4 MiB)
    const big2 = crcCollision(big);
    expect(keyOf(big2)).toBe(keyOf(big));
    const files: Array<[string, Buffer]> = [
      ['a', a],
      ['a-near', a], // equal, still in the batch being filled
      ['far', far],
      ['b', b], // same key as a, different bytes
      ['a-far', a], // equal, read back from the output file
      ['b-again', b], // equal to b (second candidate of the key)
      ['big', big],
      ['big2', big2],
      ['big-again', big],
    ];
    let first: Buffer | undefined;
    for (const workers of [1, 2, 3]) {
      const { dir, cleanup } = await tempDir();
      try {
        const out = join(dir, 'x.dfb');
        const w = new DfbWriter({ out, tmpDir: dir, workers, blockSize: 65536 });
        for (const [path, c] of files)
          await w.addFile({ ...base, path, type: EntryType.File, size: c.length }, chunks(c, 65_521));
        const res = await w.finish();
        expect(res.dedupedFiles).toBe(4);
        const blob = await readFile(out);
        // The comparisons read back from batches in flight, whose number depends on the workers: same bytes.
        first ??= blob;
        expect(blob.equals(first), `workers ${workers}`).toBe(true);
        const reader = await DfbReader.open(new BufferRangeReader(blob));
        const offsets = new Map<string, number>();
        for (const [path, c] of files) {
          const ino = reader.toc.lookup(path)!;
          offsets.set(path, reader.toc.stat(ino).dataOffset);
          expect((await reader.readFile(ino, 0, c.length)).equals(c), path).toBe(true);
        }
        expect(offsets.get('a-near')).toBe(offsets.get('a'));
        expect(offsets.get('a-far')).toBe(offsets.get('a'));
        expect(offsets.get('b')).not.toBe(offsets.get('a'));
        expect(offsets.get('b-again')).toBe(offsets.get('b'));
        expect(offsets.get('big2')).not.toBe(offsets.get('big'));
        expect(offsets.get('big-again')).toBe(offsets.get('big'));
        expect(res.dataBytes).toBe(a.length + far.length + b.length + big.length + big2.length);
      } finally {
        await cleanup();
      }
    }
  });
});
