// The converter's native path (native/dfnode_convert.c): LZ4 batches in place, whole-buffer gunzip with
// libdeflate and its fallbacks to streaming zlib. Conversions here run in-process (convertLayer/readLayer).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { compressSync, uncompressSync } from 'lz4-napi';
import { ensureNativeAddon } from '../../native/build-addon.js';
import { convertLayer } from '../../converter/convert-layer.js';
import { readLayer } from '../../converter/layer-input.js';
import { compressBatch, decodeStoredBlock } from '../../src/blob/block-codec.js';
import { convertAddon } from '../../src/blob/native-codec.js';
import { DfbReader } from '../../src/blob/reader.js';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import { Codec } from '../../src/blob/types.js';
import { buildTar, sha256, type TarEntry } from '../fixtures/tar-builder.js';
import { pseudoRandom } from '../helpers/dfb.js';
import { rejection } from '../helpers/errors.js';
import { tempDir } from '../helpers/temp.js';

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

function stream(buf: Buffer, chunk = 1 << 20): Readable {
  return Readable.from(
    (function* () {
      for (let i = 0; i < buf.length; i += chunk) yield buf.subarray(i, i + chunk);
    })(),
  );
}

/** Runs `fn` with DFNODE_INFLATE_BUDGET set (undefined: the default). */
async function withBudget<T>(budget: number | undefined, fn: () => Promise<T>): Promise<T> {
  const old = process.env.DFNODE_INFLATE_BUDGET;
  if (budget === undefined) delete process.env.DFNODE_INFLATE_BUDGET;
  else process.env.DFNODE_INFLATE_BUDGET = String(budget);
  try {
    return await fn();
  } finally {
    if (old === undefined) delete process.env.DFNODE_INFLATE_BUDGET;
    else process.env.DFNODE_INFLATE_BUDGET = old;
  }
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
    budget?: number,
  ): Promise<{ bytes: Buffer; diffId: string }> {
    const out = join(dir, `out-${n++}.dfb`);
    const r = await withBudget(budget, () =>
      convertLayer(stream(blob), { mediaType: GZIP, digest: sha256(blob), size: blob.length }, out, {
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

  it('round-trips a layer and is deterministic across worker counts and gunzip paths', async () => {
    const tar = buildTar(layerEntries());
    const blob = gzipSync(tar);
    const whole = await convert(blob, 1);
    expect(whole.diffId).toBe(sha256(tar));
    for (const [workers, budget] of [
      [3, undefined], // whole-buffer libdeflate
      [2, 0], // streaming zlib
      [1, 1024], // over the budget: streaming
    ] as const) {
      const other = await convert(blob, workers, budget);
      expect(other.diffId).toBe(whole.diffId);
      expect(other.bytes.equals(whole.bytes), `workers ${workers}, budget ${budget}`).toBe(true);
    }
    const path = join(dir, 'rt.dfb');
    await convertLayer(stream(blob), { mediaType: GZIP, digest: sha256(blob), size: blob.length }, path, {
      blockSize: BS,
      workers: 2,
      tmpDir: dir,
    });
    const reader = await DfbReader.open(await FileRangeReader.open(path));
    try {
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

  it('falls back to streaming for a multi-member gzip, with the same output', async () => {
    const tar = buildTar(layerEntries());
    const cut = 512 * 40;
    const twoMembers = Buffer.concat([gzipSync(tar.subarray(0, cut)), gzipSync(tar.subarray(cut))]);
    const a = await convert(twoMembers);
    const b = await convert(gzipSync(tar));
    expect(a.diffId).toBe(sha256(tar));
    expect(a.bytes.equals(b.bytes)).toBe(true);
  });

  it('rejects corrupt and truncated gzip clearly on both paths', async () => {
    const blob = gzipSync(buildTar(layerEntries()));
    const corrupt = Buffer.from(blob);
    for (let k = 20; k < 52; k++) corrupt[k]! ^= 0xa5;
    const truncated = blob.subarray(0, Math.floor(blob.length / 2));
    for (const budget of [undefined, 0]) {
      for (const [bad, pattern] of [
        [corrupt, /corrupt gzip data/],
        [truncated, /corrupt gzip data \(.*unexpected end of file\)/],
      ] as const) {
        const e = await rejection(convert(bad, 2, budget));
        expect(e.code).toBe('CORRUPT');
        expect(e.message).toMatch(pattern);
      }
    }
  });

  it('rejects more bytes than the manifest size (whole-buffer mode stops collecting)', async () => {
    const blob = gzipSync(buildTar(layerEntries()));
    const e = await rejection(
      readLayer(stream(blob), { mediaType: GZIP, digest: sha256(blob), size: 1000 }, async () => undefined),
    );
    expect(e.code).toBe('CORRUPT');
    expect(e.message).toMatch(/more than the 1000 bytes its manifest gives/);
  });

  it('streams a layer over the memory budget: entries arrive before the input is read', async () => {
    // Incompressible content, so the gzip is as large as the tar (~24 MiB).
    const big = pseudoRandom(24 << 20, 3, false);
    const tar = buildTar([
      { path: 'first', type: 'file', data: 'x' },
      { path: 'big', type: 'file', data: big },
    ]);
    const blob = gzipSync(tar, { level: 1 });
    const desc = { mediaType: GZIP, digest: sha256(blob), size: blob.length };
    const readAtFirstEntry = async (budget: number | undefined) => {
      let read = 0;
      let atFirst = -1;
      const counted = stream(blob, 1 << 20).on('data', (c: Buffer) => (read += c.length));
      const r = await withBudget(budget, () =>
        readLayer(counted, desc, async ({ header, body }) => {
          if (atFirst < 0) atFirst = read;
          for await (const _ of body) void _;
          void header;
        }),
      );
      expect(r.diffId).toBe(sha256(tar));
      return atFirst;
    };
    // Over the budget: a few chunks ahead at most (INPUT_AHEAD chunks and TAR_AHEAD bytes), not the layer.
    expect(await readAtFirstEntry(8 << 20)).toBeLessThan(blob.length / 2);
    // Within it (whole-buffer libdeflate): the whole input is read before the first entry.
    expect(await readAtFirstEntry(undefined)).toBe(blob.length);
  });
});
