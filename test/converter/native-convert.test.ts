// The converter's native path (native/dfnode_convert.c): LZ4 batches in place and ISA-L's streaming gunzip,
// against the JavaScript fallback (lz4-napi, node:zlib). Conversions here run in-process (convertLayer/readLayer).
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compressSync, uncompressSync } from 'lz4-napi';
import { ensureNativeAddon } from '../../native/build-addon.js';
import { convertLayer } from '../../converter/convert-layer.js';
import { readLayer, type LayerInputResult } from '../../converter/layer-input.js';
import { compressBatch, decodeStoredBlock } from '../../src/blob/block-codec.js';
import { CompressPool } from '../../src/blob/compress-pool.js';
import { convertAddon } from '../../src/blob/native-codec.js';
import { DfbReader } from '../../src/blob/reader.js';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import { Codec } from '../../src/blob/types.js';
import { buildTar, sha256, type TarEntry } from '../fixtures/tar-builder.js';
import { pseudoRandom } from '../helpers/dfb.js';
import { rejection } from '../helpers/errors.js';
import { tempDir } from '../helpers/temp.js';
import { chunkedStream, decodeInPieces, readSlowly, withoutAddon } from '../helpers/layer-input.js';

const GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
const BS = 64 * 1024;

/** Files of every kind of content: text, random, empty, duplicates, sizes around the block size. */
function layerEntries(): TarEntry[] {
  const e: TarEntry[] = [{ path: 'd/', type: 'directory' }];
  for (let i = 0; i < 40; i++) {
    const size = [0, 1, 511, BS - 1, BS, BS + 1, 3 * BS + 17, 200_000][i % 8]!;
    e.push({ path: `d/f${i}`, type: 'file', data: pseudoRandom(size, i + 1, i % 3 !== 0) });
  }
  e.push({ path: 'd/dup', type: 'file', data: pseudoRandom(200_000, 8) }); // same bytes as d/f7
  e.push({ path: 'd/link', type: 'symlink', linkname: 'f1' });
  return e;
}

/** Reads a gzip layer: every entry's path, size and content digest, and the diff ID. */
async function readAll(blob: Buffer, jsPath = false): Promise<{ entries: string[]; res: LayerInputResult }> {
  const entries: string[] = [];
  const res = await withoutAddon(jsPath, () =>
    readLayer(
      chunkedStream(blob, 100_003),
      { mediaType: GZIP, digest: sha256(blob), size: blob.length },
      async (e) => {
        if (e.header.type !== 'file') return void entries.push(`${e.header.name} ${e.header.type}`);
        const h = createHash('sha256');
        for await (const c of e.body) h.update(c);
        entries.push(`${e.header.name} ${e.header.size} ${h.digest('base64')}`);
      },
    ),
  );
  return { entries, res };
}

describe('converter native path', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let n = 0;

  beforeAll(async () => {
    const why = ensureNativeAddon();
    expect(why, 'the native addons build (npm run build:native)').toBeUndefined();
    ({ dir, cleanup } = await tempDir('dfnode-native-conv-'));
  });
  afterAll(async () => cleanup?.());

  /** Converts `blob` (a gzip layer) and returns the blob bytes and the diff ID. */
  async function convert(
    blob: Buffer,
    workers = 2,
    jsPath = false,
  ): Promise<{ bytes: Buffer; diffId: string }> {
    const out = join(dir, `out-${n++}.dfb`);
    const r = await withoutAddon(jsPath, () =>
      convertLayer(chunkedStream(blob), { mediaType: GZIP, digest: sha256(blob), size: blob.length }, out, {
        blockSize: BS,
        workers,
        tmpDir: dir,
      }),
    );
    return { bytes: await readFile(out), diffId: r.diffId };
  }

  it('loads the addon (the converter would fall back to lz4-napi without it)', () => {
    expect(convertAddon()).not.toBeNull();
  });

  it('compresses batches in place in the documented block format, Raw when LZ4 does not shrink', () => {
    const data = Buffer.concat([
      pseudoRandom(3 * BS, 5, true),
      pseudoRandom(BS, 6, false),
      Buffer.alloc(1000, 7),
    ]);
    const copy = Buffer.from(data);
    const r = compressBatch(copy, data.length, BS);
    expect(r.stored.length).toBe(5);
    let off = 0;
    for (let i = 0; i < 5; i++) {
      const orig = data.subarray(i * BS, Math.min((i + 1) * BS, data.length));
      const stored = copy.subarray(off, off + r.stored[i]!);
      off += r.stored[i]!;
      if (i === 3)
        expect(r.codecs[i]).toBe(Codec.Raw); // random bytes
      else expect(r.codecs[i]).toBe(Codec.Lz4Block);
      if (r.codecs[i] === Codec.Lz4Block) {
        expect(stored.readUInt32LE(0)).toBe(orig.length); // u32 length prefix + one LZ4 block
        expect(uncompressSync(stored).equals(orig)).toBe(true); // any LZ4 block decoder reads it
        expect(stored.length).toBeLessThan(orig.length);
      }
      expect(decodeStoredBlock(stored, r.codecs[i] as Codec, orig.length, `block ${i}`).equals(orig)).toBe(
        true,
      );
      expect(Buffer.from(r.hashes.subarray(32 * i, 32 * i + 32)).toString('hex')).toBe(
        sha256(stored).slice(7),
      );
    }
    expect(off).toBe(r.total);
    // The same bytes compress to the same stored bytes.
    const again = Buffer.from(data);
    expect(compressBatch(again, data.length, BS).total).toBe(r.total);
    expect(again.subarray(0, r.total).equals(copy.subarray(0, r.total))).toBe(true);
    // lz4-napi's blocks (the fallback) are the same format.
    expect(uncompressSync(compressSync(data.subarray(0, BS))).equals(data.subarray(0, BS))).toBe(true);
  });

  it('round-trips a layer and is deterministic across worker counts', async () => {
    const tar = buildTar(layerEntries());
    const blob = gzipSync(tar);
    const first = await convert(blob, 1);
    expect(first.diffId).toBe(sha256(tar));
    for (const workers of [2, 3]) {
      const other = await convert(blob, workers);
      expect(other.diffId).toBe(first.diffId);
      expect(other.bytes.equals(first.bytes), `workers ${workers}`).toBe(true);
    }
    // The JavaScript fallback writes other LZ4 bytes (another encoder) of the same tree.
    const js = await convert(blob, 2, true);
    expect(js.diffId).toBe(first.diffId);
    const path = join(dir, 'rt.dfb');
    await convertLayer(
      chunkedStream(blob),
      { mediaType: GZIP, digest: sha256(blob), size: blob.length },
      path,
      {
        blockSize: BS,
        workers: 2,
        tmpDir: dir,
      },
    );
    const reader = await DfbReader.open(await FileRangeReader.open(path));
    try {
      expect(js.bytes.length).toBeGreaterThan(0);
      for (const e of layerEntries()) {
        if (e.type !== 'file') continue;
        const ino = reader.toc.lookup(e.path)!;
        expect(ino, e.path).toBeDefined();
        const got = await reader.readFile(ino, 0, Infinity);
        expect(got.equals(e.data as Buffer), e.path).toBe(true);
      }
    } finally {
      await reader.close();
    }
  });

  it('compresses batches on its own threads exactly as compressBatch does, and closes with batches queued', async () => {
    const pool = new CompressPool(3);
    const inputs = Array.from({ length: 12 }, (_, i) =>
      Buffer.concat([pseudoRandom(2 * BS + 1000 * i, 40 + i, i % 2 === 0), pseudoRandom(BS, 60 + i, false)]),
    );
    const results = await Promise.all(
      inputs.map((data) => {
        const ab = new SharedArrayBuffer(data.length);
        Buffer.from(ab).set(data);
        return pool.compress(ab, data.length, BS);
      }),
    );
    for (const [i, data] of inputs.entries()) {
      const want = compressBatch(Buffer.from(data), data.length, BS);
      const got = results[i]!;
      expect(got.stored.length, `batch ${i}`).toBe(want.total);
      expect([...got.storedLengths]).toEqual([...want.stored]);
      expect([...got.codecs]).toEqual([...want.codecs]);
      expect(Buffer.from(got.hashes).equals(Buffer.from(want.hashes))).toBe(true);
      let off = 0;
      for (let b = 0; b < got.storedLengths.length; b++) {
        const stored = got.stored.subarray(off, off + got.storedLengths[b]!);
        off += stored.length;
        const orig = data.subarray(b * BS, Math.min((b + 1) * BS, data.length));
        expect(
          decodeStoredBlock(stored, got.codecs[b] as Codec, orig.length, `block ${b}`).equals(orig),
        ).toBe(true);
      }
    }
    // Closing with more batches than threads: those not started are refused, the running ones finish first.
    const late = Array.from({ length: 8 }, (_, i) =>
      pool.compress(new SharedArrayBuffer(4 << 20), 4 << 20, BS).then(
        () => 'done',
        (e: Error) => `${i}: ${e.message}`,
      ),
    );
    await pool.close();
    const outcomes = await Promise.all(late);
    expect(outcomes.filter((o) => o !== 'done').length).toBeGreaterThanOrEqual(5);
    for (const o of outcomes) expect(o).toMatch(/^done$|compression pool closed/);
    await expect(pool.compress(new ArrayBuffer(BS), BS, BS)).rejects.toThrow(/closed/);
  });

  it('gunzips on the thread pool, one call at a time per handle, and rejects corrupt data', async () => {
    const native = convertAddon()!;
    const tar = buildTar(layerEntries());
    const blob = gzipSync(tar);
    const h = native.decoder('gzip');
    const out = Buffer.alloc(tar.length + 10);
    const first = native.decodeAsync(h, blob, out, 0);
    expect(() => native.decodeAsync(h, blob, out, 0)).toThrow(/has not finished/);
    const [inUsed, outUsed, finished] = await first;
    expect([inUsed, outUsed, finished]).toEqual([blob.length, tar.length, true]);
    expect(out.subarray(0, outUsed).equals(tar)).toBe(true);
    const corrupt = Buffer.from(blob);
    for (let k = 20; k < 52; k++) corrupt[k]! ^= 0xa5;
    await expect(native.decodeAsync(native.decoder('gzip'), corrupt, out, 0)).rejects.toMatchObject({
      code: 'Z_DATA_ERROR',
    });
  });

  it('gunzips in pieces of any size, like zlib', async () => {
    const native = convertAddon()!;
    const tar = buildTar(layerEntries());
    const blob = gzipSync(tar);
    // the three piece sizes at once, each on a handle of its own (one call at a time per handle): many
    // thousand round trips through the thread pool each
    const cases = [
      [13, 4096],
      [7919, 13],
      [blob.length, 100_000],
    ] as const;
    await Promise.all(
      cases.map(async ([inStep, outSize]) => {
        const r = await decodeInPieces(native, 'gzip', blob, inStep, outSize);
        expect(r.finished).toBe(true);
        expect(r.finishedEarly).toBe(false);
        expect(r.overlapRefused).toBe(true);
        expect(r.out.equals(tar), `in ${inStep}, out ${outSize}`).toBe(true);
      }),
    );
  }, 120_000);

  it('reads multi-member gzip and ignores trailing garbage as node:zlib does', async () => {
    const tar = buildTar(layerEntries());
    const cut = 512 * 40;
    const one = await readAll(gzipSync(tar));
    expect(one.res.diffId).toBe(sha256(tar));
    const twoMembers = Buffer.concat([gzipSync(tar.subarray(0, cut)), gzipSync(tar.subarray(cut))]);
    const trailing = Buffer.concat([gzipSync(tar), Buffer.from('\0\0garbage after the member')]);
    for (const blob of [twoMembers, trailing]) {
      const js = await readAll(blob, true);
      const nat = await readAll(blob);
      expect(gunzipSync(blob).equals(tar)).toBe(true);
      expect(nat.entries).toEqual(one.entries);
      expect({ ...nat.res, tarBuffers: 0 }).toEqual({ ...js.res, tarBuffers: 0 }); // buffer reuse depends on timing
      expect(nat.res.diffId).toBe(sha256(tar));
    }
  });

  it('rejects corrupt and truncated gzip clearly on both paths', async () => {
    const blob = gzipSync(buildTar(layerEntries()));
    const corrupt = Buffer.from(blob);
    for (let k = 20; k < 52; k++) corrupt[k]! ^= 0xa5;
    const truncated = blob.subarray(0, Math.floor(blob.length / 2));
    for (const jsPath of [false, true]) {
      for (const [bad, pattern] of [
        [corrupt, /corrupt gzip data/],
        [truncated, /corrupt gzip data \(.*unexpected end of file\)/],
      ] as const) {
        const e = await rejection(convert(bad, 2, jsPath));
        expect(e.code).toBe('CORRUPT');
        expect(e.message).toMatch(pattern);
      }
    }
  });

  it('bounds its tar buffers when one input chunk inflates to hundreds of MB (a gzip bomb), on both paths', async () => {
    // 384 MiB of zeros: a gzip of ~380 KB, read as a single chunk. The tar is produced 4 MiB at a time
    // and waits for the parser, so a few buffers circulate instead of ~96 at once (ISA-L on libuv's pool,
    // and zlib on the input worker, which stops mid-chunk).
    const size = 384 << 20;
    const bomb = gzipSync(buildTar([{ path: 'zeros', type: 'file', data: Buffer.alloc(size) }]), {
      level: 9,
    });
    expect(bomb.length).toBeLessThan(1 << 20);
    for (const jsPath of [false, true]) {
      // a parser slower than the inflate
      const { seen, tarBuffers } = await withoutAddon(jsPath, () => readSlowly(bomb, GZIP));
      expect(seen, jsPath ? 'zlib' : 'ISA-L').toBe(size);
      expect(tarBuffers, jsPath ? 'zlib' : 'ISA-L').toBeLessThanOrEqual(8);
    }
  }, 90_000);

  it('streams the input: entries arrive long before the whole layer is read', async () => {
    // Incompressible content, so the gzip is as large as the tar (~24 MiB).
    const tar = buildTar([
      { path: 'first', type: 'file', data: 'x' },
      { path: 'big', type: 'file', data: pseudoRandom(24 << 20, 3, false) },
    ]);
    const blob = gzipSync(tar, { level: 1 });
    const desc = { mediaType: GZIP, digest: sha256(blob), size: blob.length };
    for (const jsPath of [false, true]) {
      let read = 0;
      let atFirst = -1;
      const counted = chunkedStream(blob, 1 << 20).on('data', (c: Buffer) => (read += c.length));
      const r = await withoutAddon(jsPath, () =>
        readLayer(counted, desc, async ({ body }) => {
          if (atFirst < 0) atFirst = read;
          for await (const _ of body) void _;
        }),
      );
      expect(r.diffId).toBe(sha256(tar));
      // A few input chunks ahead at most (INPUT_AHEAD chunks, TAR_AHEAD bytes), not the layer.
      expect(atFirst, jsPath ? 'zlib' : 'ISA-L').toBeLessThan(blob.length / 4);
    }
  });
});
