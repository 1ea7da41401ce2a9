import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { compressBlock } from '../../src/blob/block-codec.js';
import { EntryTree, nodeFromMeta } from '../../src/blob/entry-tree.js';
import { encodeFooter } from '../../src/blob/footer.js';
import { DfbReader } from '../../src/blob/reader.js';
import { encodeToc } from '../../src/blob/toc-encoder.js';
import { B } from '../../src/blob/toc-layout.js';
import { Codec, EntryType, TocCodec } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import { base, chunks, pseudoRandom } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { BufferRangeReader, rng } from './util.js';

/** Files of sizes around block boundaries, written with the given options; returns the blob and contents. */
async function writeFiles(dir: string, name: string, blockSize: number, workers: number, sizes: number[]) {
  const out = join(dir, name);
  const w = new DfbWriter({ out, tmpDir: dir, blockSize, workers });
  const files: Array<{ path: string; content: Buffer }> = [];
  for (let i = 0; i < sizes.length; i++) {
    const content = pseudoRandom(sizes[i]!, 1000 + i, i % 3 !== 0);
    const path = `d${i % 4}/f${i}`;
    files.push({ path, content });
    await w.addFile(
      { ...base, path, type: EntryType.File, size: content.length },
      chunks(content, 1 + ((i * 7717) % 100_000)),
    );
  }
  const res = await w.finish();
  return { res, blob: await readFile(out), files };
}

function sizesFor(bs: number): number[] {
  return [0, 1, bs - 1, bs, bs + 1, 7, Math.floor(3.5 * bs), 2 * bs - 3, 100, 5 * bs + 11, 3];
}

describe('blocks', () => {
  for (const bs of [16 * 1024, 64 * 1024, 1024 * 1024]) {
    it(`reads files across block boundaries (block size ${bs})`, async () => {
      const { dir, cleanup } = await tempDir();
      try {
        const { res, blob, files } = await writeFiles(dir, 'b.dfb', bs, 2, sizesFor(bs));
        const rr = new BufferRangeReader(blob);
        const reader = await DfbReader.open(rr);
        const toc = reader.toc;
        expect(reader.footer.blockSize).toBe(bs);
        const total = files.reduce((s, f) => s + f.content.length, 0);
        expect(res.dataBytes).toBe(total);
        expect(toc.blockCount).toBe(Math.ceil(total / bs));
        for (let i = 0; i < toc.blockCount; i++) {
          const b = toc.block(i);
          expect(b.length).toBe(i < toc.blockCount - 1 ? bs : total - (toc.blockCount - 1) * bs);
          expect(b.streamOffset).toBe(i * bs);
          const block = await reader.readBlock(i);
          expect(block.length).toBe(b.length);
          expect(DfbReader.verifyBlock(toc, i, await reader.readStoredBlock(i)).equals(block)).toBe(true);
        }
        // both codecs are used (half the files are incompressible)
        const codecs = new Set(Array.from({ length: toc.blockCount }, (_, i) => toc.block(i).codec));
        expect(codecs.has(Codec.Lz4Block)).toBe(true);
        const rand = rng(bs);
        for (const f of files) {
          const ino = toc.lookup(f.path)!;
          const st = toc.stat(ino);
          expect(st.size).toBe(f.content.length);
          expect((await reader.readFile(ino, 0, st.size)).equals(f.content)).toBe(true);
          for (let k = 0; k < 8; k++) {
            const off = Math.floor(rand() * (st.size + 2));
            const len = Math.floor(rand() * (2.5 * bs));
            const got = await reader.readFile(ino, off, len);
            expect(got.equals(f.content.subarray(off, off + len))).toBe(true);
          }
          if (st.size > 0) {
            const [first, last] = toc.blocksForRange(st.dataOffset, st.size);
            expect(first).toBe(Math.floor(st.dataOffset / bs));
            expect(last).toBe(Math.floor((st.dataOffset + st.size - 1) / bs));
          }
        }
        // a read spanning several blocks is one range read
        const big = files.find((f) => f.content.length === 5 * bs + 11)!;
        const before = rr.reads;
        await reader.readFile(toc.lookup(big.path)!, 0, big.content.length);
        expect(rr.reads - before).toBe(1);
      } finally {
        await cleanup();
      }
    });
  }

  it('reads blobs with variable block sizes using the table', async () => {
    // Cut a data stream at irregular points (as a content-defined chunker would) and build the blob by hand.
    const stream = pseudoRandom(300_000, 99);
    const cuts = [0, 1, 5000, 70_000, 70_001, 200_000, 300_000];
    const recs: Buffer[] = [];
    const stored: Buffer[] = [];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const c = compressBlock(Buffer.from(stream.subarray(cuts[i], cuts[i + 1])));
      const rec = Buffer.alloc(B.SIZE);
      rec.writeUInt32LE(c.stored.length, B.storedLength);
      rec.writeUInt32LE(cuts[i + 1]! - cuts[i]!, B.length);
      rec.writeUInt8(c.codec, B.codec);
      c.sha256.copy(rec, B.sha256);
      recs.push(rec);
      stored.push(c.stored);
    }
    const tree = new EntryTree();
    const files = [
      { path: 'a', off: 0, size: 100_000 },
      { path: 'b', off: 100_000, size: 199_990 },
      { path: 'c', off: 299_990, size: 10 },
    ];
    for (const f of files) {
      const n = nodeFromMeta({ ...base, path: f.path, type: EntryType.File });
      n.size = f.size;
      n.dataOffset = f.off;
      tree.put(f.path, n);
    }
    const data = Buffer.concat(stored);
    const { toc } = encodeToc({
      root: tree.root,
      blockRecords: Buffer.concat(recs),
      blockCount: recs.length,
      dataLength: stream.length,
      storedDataLength: data.length,
    });
    const z = deflateSync(toc);
    const footer = encodeFooter({
      flags: 0,
      blockSize: 65536,
      tocCodec: TocCodec.Zlib,
      tocOffset: data.length,
      tocStoredLength: z.length,
      tocLength: toc.length,
      tocSha256: createHash('sha256').update(z).digest(),
    });
    const reader = await DfbReader.open(new BufferRangeReader(Buffer.concat([data, z, footer])));
    expect(reader.toc.blocksForRange(4999, 2)).toEqual([1, 2]);
    expect(reader.toc.blocksForRange(70_000, 1)).toEqual([3, 3]);
    for (const f of files) {
      const ino = reader.toc.lookup(f.path)!;
      expect((await reader.readFile(ino, 0, f.size)).equals(stream.subarray(f.off, f.off + f.size))).toBe(
        true,
      );
      expect(
        (await reader.readFile(ino, 69_990, 20)).equals(
          stream.subarray(f.off + 69_990, Math.min(f.off + f.size, f.off + 70_010)),
        ),
      ).toBe(true);
    }
  });
});

describe('determinism', () => {
  it('gives byte-identical blobs for the same calls regardless of worker count', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const sizes = [...sizesFor(16384), 300_000, 5 << 20, 12, 12];
      const a = await writeFiles(dir, 'a.dfb', 16384, 1, sizes);
      const b = await writeFiles(dir, 'b.dfb', 16384, 3, sizes);
      const c = await writeFiles(dir, 'c.dfb', 16384, 0, sizes);
      expect(a.blob.equals(b.blob)).toBe(true);
      expect(a.blob.equals(c.blob)).toBe(true);
      expect(a.res).toEqual(b.res);
    } finally {
      await cleanup();
    }
  });

  it('keeps call order when addFile calls are not awaited', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const sizes = [100_000, 5, 70_000, 0, 33_333];
      const a = await writeFiles(dir, 'a.dfb', 16384, 2, sizes);
      const w = new DfbWriter({ out: join(dir, 'b.dfb'), tmpDir: dir, blockSize: 16384, workers: 1 });
      const pending = a.files.map((f, i) =>
        w.addFile(
          { ...base, path: f.path, type: EntryType.File, size: f.content.length },
          chunks(f.content, 1 + ((i * 7717) % 100_000)),
        ),
      );
      const res = await w.finish();
      await Promise.all(pending);
      expect(res).toEqual(a.res);
      expect((await readFile(join(dir, 'b.dfb'))).equals(a.blob)).toBe(true);
    } finally {
      await cleanup();
    }
  });

  it('writer throughput (printed, not asserted)', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const content = pseudoRandom(64 << 20, 5);
      const t0 = performance.now();
      const w = new DfbWriter({ out: join(dir, 't.dfb'), tmpDir: dir, workers: 0 });
      // 64 MiB in files of 256 KiB, mixed compressible / incompressible
      for (let i = 0; i < 256; i++) {
        const part = content.subarray(i << 18, (i + 1) << 18);
        await w.addFile(
          { ...base, path: `f/${i}`, type: EntryType.File, size: part.length },
          chunks(part, 65536),
        );
      }
      const res = await w.finish();
      const s = (performance.now() - t0) / 1000;
      console.log(
        `DFB writer: ${(64 / s).toFixed(1)} MiB/s (${res.blocks} blocks, stored ${(res.storedDataBytes / 2 ** 20).toFixed(1)} MiB)`,
      );
      expect(res.dataBytes).toBe(64 << 20);
    } finally {
      await cleanup();
    }
  });
});
