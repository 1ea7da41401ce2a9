/** The piece table of a raw file: built while streaming, checked on decode, each piece verified. */
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import {
  decodeTable,
  encodeTable,
  PieceHasher,
  PieceLayout,
  pieceSizeFor,
  tableDigest,
  verifyPiece,
} from '../../src/mirror/piece-table.js';
import { flipBits } from '../helpers/bytes.js';
import { sha256Digest } from '../helpers/digest.js';

const P = 64 * 1024;

function tableOf(data: Buffer, chunk: number) {
  const h = new PieceHasher(P);
  for (let at = 0; at < data.length; at += chunk) h.update(data.subarray(at, at + chunk));
  return h.finish();
}

describe('piece table', () => {
  it('hashes each piece and the whole file the same way whatever the chunking', () => {
    const data = randomBytes(5 * P + 123);
    const t = tableOf(data, 1000);
    expect(t.digest).toBe(sha256Digest(data));
    expect(t.size).toBe(data.length);
    expect(t.pieces).toHaveLength(6);
    for (let u = 0; u < 6; u++) {
      const want = createHash('sha256')
        .update(data.subarray(u * P, (u + 1) * P))
        .digest();
      expect(t.pieces[u]!.equals(want)).toBe(true);
    }
    expect(encodeTable(tableOf(data, P * 3 + 7)).equals(encodeTable(t))).toBe(true);
    expect(tableDigest(tableOf(data, 4096))).toBe(tableDigest(t));
  });

  it('lays pieces out as cache units, the last one short', () => {
    const l = new PieceLayout(5 * P + 123, P);
    expect(l.units).toBe(6);
    expect(l.length(5)).toBe(123);
    expect(l.unitsFor(P - 1, 2)).toEqual([0, 1]);
    expect(l.unitsFor(5 * P, 124)).toBeUndefined();
    expect(l.cacheLayout).toEqual({ blockCount: 5, tocOffset: 5 * P });
  });

  it('decodes what it encodes and refuses a malformed table or another digest', () => {
    const data = randomBytes(2 * P + 1);
    const t = tableOf(data, 777);
    const buf = encodeTable(t);
    expect(decodeTable(buf, t.digest)).toEqual(t);
    const j = JSON.parse(buf.toString()) as Record<string, unknown>;
    const bad = (o: Record<string, unknown>) => () =>
      decodeTable(Buffer.from(JSON.stringify({ ...j, ...o })));
    expect(bad({ pieces: (j.pieces as string[]).slice(1) })).toThrow(/expected 3 pieces/);
    expect(bad({ pieceSize: 1 })).toThrow(/piece size/);
    expect(bad({ size: -1 })).toThrow(/bad size/);
    expect(bad({ digest: 'md5:x' })).toThrow(/sha256/);
    expect(bad({ pieces: ['zz', 'a', 'b'] })).toThrow(/piece 0/);
    expect(() => decodeTable(Buffer.from('{'))).toThrow(/not JSON/);
    expect(() => decodeTable(buf, sha256Digest('other'))).toThrow(
      expect.objectContaining({ code: 'DIGEST_MISMATCH' }) as DfError,
    );
  });

  it('verifies a piece and names the one that does not match', () => {
    const data = randomBytes(2 * P + 10);
    const t = tableOf(data, P);
    verifyPiece(t, 2, data.subarray(2 * P));
    const lie = Buffer.from(data.subarray(P, 2 * P));
    flipBits(lie, 100);
    expect(() => verifyPiece(t, 1, lie)).toThrow(/piece 1 .* does not match/);
    expect(() => verifyPiece(t, 2, data.subarray(2 * P, 2 * P + 5))).toThrow(/5 bytes, expected 10/);
  });

  it('cuts a file into 512 KiB pieces up to 2 GiB, then about 4,096 pieces, at most 16 MiB each', () => {
    const KiB = 1024;
    const GiB = 1024 * 1024 * KiB;
    expect(pieceSizeFor(0)).toBe(512 * KiB);
    expect(pieceSizeFor(68_289_676)).toBe(512 * KiB); // bench/mirror's image: 131 pieces
    expect(pieceSizeFor(2 * GiB)).toBe(512 * KiB);
    expect(pieceSizeFor(2 * GiB + 1)).toBe(1024 * KiB);
    expect(pieceSizeFor(64 * GiB)).toBe(16 * 1024 * KiB);
    expect(pieceSizeFor(1024 * GiB)).toBe(16 * 1024 * KiB); // capped: 65,536 pieces
    for (const size of [1, 5 * GiB, 300 * GiB]) {
      const p = pieceSizeFor(size);
      expect(p & (p - 1)).toBe(0);
      expect(Math.ceil(size / p)).toBeLessThanOrEqual(65_536);
    }
  });
});
