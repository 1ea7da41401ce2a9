import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeFooter, encodeFooter, FOOTER_SIZE, MAX_TOC_LENGTH } from '../../src/blob/footer.js';
import { DfbReader } from '../../src/blob/reader.js';
import { Toc } from '../../src/blob/toc.js';
import { H, PX } from '../../src/blob/toc-layout.js';
import { parseSections } from '../../src/blob/toc-validate.js';
import { TocCodec } from '../../src/blob/types.js';
import { DfError } from '../../src/errors.js';
import { exercise } from '../blob/exercise.js';
import { BufferRangeReader, bounded, parts, withToc } from '../blob/util.js';
import { smallRichBlob } from '../helpers/dfb.js';
import {
  applyMutations,
  mutations,
  params,
  returnsOrDfError,
  returnsOrDfErrorSync,
  timeoutFor,
} from './fuzz.js';

// The DFB footer and TOC come from whoever built the blob, through any peer: decoding either succeeds with a
// TOC that passed validation (so every walk, stat, lookup, read and block of it works), or throws a DfError.

let blob: Buffer;
let tocBytes: Buffer;

beforeAll(async () => {
  blob = await smallRichBlob();
  tocBytes = parts(blob).toc;
});

/** Opens and reads everything; bounded in time so that a hang fails the case instead of the run. */
async function openAll(b: Buffer): Promise<void> {
  await bounded(10_000, 'open and read a mutated blob', async () => {
    const r = await DfbReader.open(new BufferRangeReader(b));
    await exercise(r);
  });
}

describe('fuzz: DFB footer', () => {
  it(
    'a mutated footer decodes to a consistent footer or a DfError, and the blob opens or fails cleanly',
    async () => {
      await fc.assert(
        fc.asyncProperty(mutations(FOOTER_SIZE, 4), async (ms) => {
          const b = applyMutations(blob, ms, blob.length - FOOTER_SIZE);
          const f = returnsOrDfErrorSync(() => decodeFooter(b.subarray(b.length - FOOTER_SIZE), b.length));
          if (!(f instanceof DfError)) {
            expect(f.tocOffset + f.tocStoredLength + FOOTER_SIZE).toBe(b.length);
            expect(f.tocLength).toBeLessThanOrEqual(MAX_TOC_LENGTH);
          }
          await returnsOrDfError(() => openAll(b));
        }),
        params(),
      );
    },
    timeoutFor(),
  );
});

describe('fuzz: DFB TOC', () => {
  it(
    'a mutated TOC (header-heavy) is validated or refused with a DfError',
    async () => {
      const len = tocBytes.length;
      const at = fc.oneof(fc.nat(H.SIZE - 1), fc.nat(len - 1));
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ at, value: fc.oneof(fc.nat(255), fc.constantFrom(0, 0x7f, 0x80, 0xff)) }), {
            minLength: 1,
            maxLength: 6,
          }),
          fc.boolean(),
          async (edits, asU32) => {
            const t = Buffer.from(tocBytes);
            for (const e of edits) {
              if (asU32 && e.at + 4 <= t.length) t.writeUInt32LE((e.value * 0x0101_0101) >>> 0, e.at);
              else t[e.at] = e.value;
            }
            const toc = returnsOrDfErrorSync(() => Toc.decode(t));
            if (!(toc instanceof DfError)) {
              // A TOC that decodes is whole: every name it lists can be looked up again.
              for (const { path, ino } of toc.walk()) expect(toc.lookup(path)).toBe(ino);
            }
            await returnsOrDfError(() => openAll(withToc(blob, t)));
          },
        ),
        params(),
      );
    },
    timeoutFor(1, 40),
  );

  it(
    'a truncated or extended TOC is refused with a DfError',
    () => {
      fc.assert(
        fc.property(fc.integer({ min: -tocBytes.length, max: 4096 }), fc.nat(255), (delta, fill) => {
          if (delta === 0) return;
          const t =
            delta < 0
              ? tocBytes.subarray(0, tocBytes.length + delta)
              : Buffer.concat([tocBytes, Buffer.alloc(delta, fill)]);
          const r = returnsOrDfErrorSync(() => Toc.decode(t));
          expect(r).toBeInstanceOf(DfError);
        }),
        params(),
      );
    },
    timeoutFor(),
  );

  it(
    'mutated prefetch fields (1.1 header and packed ranges) decode to valid ranges or a DfError',
    async () => {
      const b11 = await smallRichBlob([
        {
          path: '/usr/lib/big',
          ranges: [
            [0, 1000],
            [50_000, 1000],
            [120_000, 5],
          ],
        },
        { path: '/etc/f3' },
      ]);
      const t11 = parts(b11).toc;
      const rangesAt = parseSections(t11).strBase + t11.readUInt32LE(PX.offset);
      const count = t11.readUInt32LE(PX.count);
      expect(count).toBeGreaterThan(1);
      const at = fc.oneof(
        fc.integer({ min: H.SIZE, max: PX.SIZE - 1 }),
        fc.integer({ min: rangesAt, max: rangesAt + count * PX.RANGE - 1 }),
      );
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ at, value: fc.oneof(fc.nat(255), fc.constantFrom(0, 0x7f, 0x80, 0xff)) }), {
            minLength: 1,
            maxLength: 4,
          }),
          async (edits) => {
            const t = Buffer.from(t11);
            for (const e of edits) t[e.at] = e.value;
            const toc = returnsOrDfErrorSync(() => Toc.decode(t));
            if (!(toc instanceof DfError)) {
              let end = -1;
              for (const r of toc.prefetchRanges) {
                expect(r.offset).toBeGreaterThan(end);
                expect(r.length).toBeGreaterThan(0);
                end = r.offset + r.length;
                expect(end).toBeLessThanOrEqual(toc.dataLength);
                expect(toc.blocksForRange(r.offset, r.length)[0]).toBeGreaterThanOrEqual(0);
              }
            }
            await returnsOrDfError(() => openAll(withToc(b11, t)));
          },
        ),
        params(),
      );
    },
    timeoutFor(1, 40),
  );

  it('refuses a TOC claiming 2^31 or 2^32-1 records of any kind before allocating for them', () => {
    for (const field of [H.blockCount, H.inodeCount, H.direntCount, H.xattrCount]) {
      for (const n of [0x8000_0000, 0xffff_ffff]) {
        const t = Buffer.from(tocBytes);
        t.writeUInt32LE(n, field);
        expect(() => Toc.decode(t)).toThrow(/section sizes add up/);
      }
    }
    const t = Buffer.from(tocBytes);
    t.writeUInt32LE(0xffff_ffff, H.blockRecordSize);
    expect(() => Toc.decode(t)).toThrow(DfError);
  });

  it('refuses a footer announcing a TOC larger than the limit, and a zlib bomb beyond the announced length', async () => {
    const { data } = parts(blob);
    const bomb = deflateSync(Buffer.alloc(64 << 20));
    const footer = (tocLength: number) =>
      encodeFooter({
        flags: 0,
        blockSize: 65536,
        tocCodec: TocCodec.Zlib,
        tocOffset: data.length,
        tocStoredLength: bomb.length,
        tocLength,
        tocSha256: createHash('sha256').update(bomb).digest(),
      });
    await expect(
      DfbReader.open(new BufferRangeReader(Buffer.concat([data, bomb, footer(MAX_TOC_LENGTH + 1)]))),
    ).rejects.toMatchObject({ code: 'CORRUPT' });
    await expect(
      DfbReader.open(new BufferRangeReader(Buffer.concat([data, bomb, footer(1024)]))),
    ).rejects.toMatchObject({ code: 'CORRUPT' });
  });
});
