import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { FOOTER_SIZE } from '../../src/blob/footer.js';
import { DfbReader } from '../../src/blob/reader.js';
import { Toc } from '../../src/blob/toc.js';
import { B, H } from '../../src/blob/toc-layout.js';
import { Codec } from '../../src/blob/types.js';
import { DfError } from '../../src/errors.js';
import { exercise } from './exercise.js';
import { smallRichBlob } from '../helpers/dfb.js';
import { BufferRangeReader, bounded, parts, rng, withToc } from './util.js';

/**
 * Property: whatever the bytes, opening and fully reading a blob either succeeds or throws a DfError:
 * never another exception type, a crash or a hang (each case is time-bounded).
 */
let blob: Buffer;
let toc: Toc;
let tocBytes: Buffer;

beforeAll(async () => {
  blob = await smallRichBlob();
  tocBytes = parts(blob).toc;
  toc = Toc.decode(tocBytes);
});

interface Tally {
  ok: number;
  rejected: Map<string, number>;
  bad: string[];
}

async function runCase(b: Buffer, tally: Tally, what: string): Promise<void> {
  try {
    await bounded(5000, what, async () => {
      const r = await DfbReader.open(new BufferRangeReader(b));
      await exercise(r);
    });
    tally.ok++;
  } catch (err) {
    if (err instanceof DfError) tally.rejected.set(err.code, (tally.rejected.get(err.code) ?? 0) + 1);
    else tally.bad.push(`${what}: ${(err as Error)?.stack ?? String(err)}`);
  }
}

const newTally = (): Tally => ({ ok: 0, rejected: new Map(), bad: [] });

function interesting(r: () => number, n: number): number {
  const vals = [
    0,
    1,
    2,
    3,
    n - 1,
    n,
    n + 1,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0xffff_fffe,
    48,
    64,
    4096,
  ];
  return r() < 0.7 ? vals[Math.floor(r() * vals.length)]! >>> 0 : Math.floor(r() * 0x1_0000_0000);
}

describe('fuzz', () => {
  it('mutated footers', async () => {
    const r = rng(1);
    const tally = newTally();
    for (let c = 0; c < 1500; c++) {
      const b = Buffer.from(blob);
      const f = b.subarray(b.length - FOOTER_SIZE);
      const k = 1 + Math.floor(r() * 3);
      for (let j = 0; j < k; j++) {
        if (r() < 0.5) f[Math.floor(r() * FOOTER_SIZE)] = Math.floor(r() * 256);
        else f.writeUInt32LE(interesting(r, f.length), 4 * Math.floor(r() * (FOOTER_SIZE / 4)));
      }
      await runCase(b, tally, `footer case ${c}`);
    }
    expect(tally.bad).toEqual([]);
    expect(tally.rejected.get('CORRUPT')).toBeGreaterThan(100);
  });

  it('mutated TOCs, re-deflated with a valid digest so the decoder sees them', async () => {
    const r = rng(2);
    const tally = newTally();
    const n = tocBytes.length;
    for (let c = 0; c < 3000; c++) {
      let t = Buffer.from(tocBytes);
      const strategy = c % 5;
      if (strategy === 0) {
        // a few random bytes anywhere
        const k = 1 + Math.floor(r() * 4);
        for (let j = 0; j < k; j++) t[Math.floor(r() * n)] = Math.floor(r() * 256);
      } else if (strategy === 1 || strategy === 2) {
        // structured: an interesting u32 at a 4-aligned offset (fields are 4-aligned in every record)
        const k = 1 + Math.floor(r() * 2);
        for (let j = 0; j < k; j++) {
          const off = 4 * Math.floor(r() * ((strategy === 1 ? Math.min(n, 4096) : n) / 4));
          if (off + 4 <= n) t.writeUInt32LE(interesting(r, toc.inodeCount), off);
        }
      } else if (strategy === 3) {
        // header counts
        const field = 4 * Math.floor(r() * 12);
        t.writeUInt32LE(interesting(r, t.readUInt32LE(field)), field);
      } else {
        // truncate, extend or splice
        const cut = Math.floor(r() * n);
        t =
          r() < 0.5
            ? t.subarray(0, cut)
            : Buffer.concat([
                t.subarray(0, cut),
                Buffer.alloc(Math.floor(r() * 64), Math.floor(r() * 256)),
                t.subarray(cut),
              ]);
      }
      await runCase(withToc(blob, t, 16384), tally, `TOC case ${c}`);
    }
    expect(tally.bad).toEqual([]);
    // both outcomes happen: the fuzzer reaches deep validation and harmless changes still read
    expect(tally.rejected.get('CORRUPT')).toBeGreaterThan(1000);
    expect(tally.ok).toBeGreaterThan(10);
    console.log(
      `TOC fuzz: ${tally.ok} accepted, rejected ${JSON.stringify(Object.fromEntries(tally.rejected))}`,
    );
  });

  it('mutated blocks, with and without a matching digest', async () => {
    const r = rng(3);
    const tally = newTally();
    const lz4 = Array.from({ length: toc.blockCount }, (_, i) => i).filter(
      (i) => toc.block(i).codec === Codec.Lz4Block,
    );
    for (let c = 0; c < 1500; c++) {
      const i = c % 2 ? lz4[Math.floor(r() * lz4.length)]! : Math.floor(r() * toc.blockCount);
      const blk = toc.block(i);
      const stored = Buffer.from(blob.subarray(blk.offset, blk.offset + blk.storedLength));
      const k = 1 + Math.floor(r() * 8);
      for (let j = 0; j < k; j++) stored[Math.floor(r() * stored.length)] = Math.floor(r() * 256);
      let b: Buffer;
      if (c % 3 === 0) {
        b = Buffer.from(blob); // digest catches it
      } else {
        const t = Buffer.from(tocBytes);
        createHash('sha256')
          .update(stored)
          .digest()
          .copy(t, H.SIZE + i * B.SIZE + B.sha256);
        b = withToc(blob, t, 16384); // digest matches: the decompressor sees garbage
      }
      stored.copy(b, blk.offset);
      await runCase(b, tally, `block case ${c} (block ${i})`);
      // verifyBlock directly, as a cache or peer layer would
      try {
        DfbReader.verifyBlock(toc, i, stored);
      } catch (err) {
        if (!(err instanceof DfError)) tally.bad.push(`verifyBlock ${i}: ${String(err)}`);
      }
    }
    expect(tally.bad).toEqual([]);
    expect(tally.rejected.get('DIGEST_MISMATCH')).toBeGreaterThan(100);
    expect(tally.rejected.get('CORRUPT')).toBeGreaterThan(100);
  });
});
