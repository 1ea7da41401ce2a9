// NativeFuseBinding direct reads (native/direct_read.c): reads whose blocks are all in the BlobCache are
// answered in C on the FUSE reader threads; the others go to the JS FileReader. Checked through the kernel with
// O_DIRECT (every read(2) becomes a FUSE read of exactly that offset and size), counting the JS reads.
// Needs root and /dev/fuse; builds the addon first when it is missing or stale.
import { constants } from 'node:fs';
import { open, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Codec } from '../../src/blob/types.js';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { BlockMemoryCache } from '../../src/fetch/block-memory-cache.js';
import { directTables } from '../../src/fuse/direct-reads.js';
import { LayerFs } from '../../src/fuse/layer-fs.js';
import {
  NativeFuseBinding,
  type NativeFuseMount,
  type NativeMountOptions,
} from '../../src/fuse/native-binding.js';
import { LayerCore } from '../../src/layer/layer-core.js';
import { FakeSource } from '../fetch/helpers.js';
import { makeBlob, pseudoRandom, writeDfb } from '../helpers/dfb.js';
import { requireNativeMounts } from '../helpers/native.js';
import { tempDir } from '../helpers/temp.js';
import { DfbFileReader } from './layer.js';

const req = requireNativeMounts();

/** Deterministic incompressible bytes (stored Raw). */
const noise = (n: number, seed: number): Buffer => pseudoRandom(n, seed, false);

/** Text, then noise, then text...: LZ4 and Raw blocks in one file (blocks are 16 KiB in writeDfb). */
function mixed(n: number): Buffer {
  const parts: Buffer[] = [];
  for (let at = 0, k = 0; at < n; k++) {
    const len = Math.min(n - at, 20_000 + ((k * 7919) % 30_000));
    parts.push(
      k % 2 ? noise(len, k + 1) : Buffer.from(Array.from({ length: len }, (_, i) => 97 + ((i + k) % 26))),
    );
    at += len;
  }
  return Buffer.concat(parts);
}

const FILES: Record<string, Buffer> = {
  tiny: Buffer.from('hello\n'),
  empty: Buffer.alloc(0),
  raw: noise(200_003, 7),
  lz4: Buffer.from('abcdefghij'.repeat(30_011)),
  mixed: mixed(700_001),
  tail: noise(5_000, 9),
};

/** A seeded PRNG for offsets and sizes. */
function rng(seed: number): (n: number) => number {
  let x = seed >>> 0;
  return (n) => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return Math.floor((x / 2 ** 32) * n);
  };
}

describe.skipIf(req.skip)('NativeFuseBinding direct reads from the cache (kernel)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let reader: DfbFileReader;
  let cache: BlobCache;
  let m: NativeFuseMount;
  let mp: string;
  const handles = new Map<string, FileHandle>();

  /** The stored bytes of unit u from the DFB file, written to the cache (as the unit fetcher does after verifying). */
  async function putUnit(u: number): Promise<void> {
    const toc = reader.toc;
    const off = toc.blockOffset(u);
    const end = u < toc.blockCount ? toc.blockOffset(u + 1) : cache.size;
    const fh = await open(join(dir, 'layer.dfb'));
    try {
      const buf = Buffer.alloc(end - off);
      await fh.read(buf, 0, buf.length, off);
      await cache.write(u, off, buf);
    } finally {
      await fh.close();
    }
  }

  /** Blocks under [offset, offset+length) of a file. */
  function blocksOf(name: string, offset = 0, length = FILES[name]!.length - offset): number[] {
    const st = reader.toc.stat(reader.toc.lookup(name)!);
    const [a, b] = reader.toc.blocksForRange(st.dataOffset + offset, length);
    return Array.from({ length: b - a + 1 }, (_, i) => a + i);
  }

  async function pread(name: string, offset: number, length: number): Promise<Buffer> {
    let fh = handles.get(name);
    if (!fh) {
      fh = await open(join(mp, name), constants.O_RDONLY | constants.O_DIRECT);
      handles.set(name, fh);
    }
    const buf = Buffer.alloc(length);
    const { bytesRead } = await fh.read(buf, 0, length, offset);
    return buf.subarray(0, bytesRead);
  }

  function expected(name: string, offset: number, length: number): Buffer {
    const f = FILES[name]!;
    return f.subarray(Math.min(offset, f.length), Math.min(offset + length, f.length));
  }

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfnode-direct-'));
    await writeDfb(dir, 'layer', {
      files: Object.entries(FILES).map(([path, content]) => ({ path, content })),
    });
    reader = await DfbFileReader.open(join(dir, 'layer.dfb'));
    const { size } = await stat(join(dir, 'layer.dfb'));
    cache = await BlobCache.open({ dir: join(dir, 'cache'), digest: 'sha256:test', size });
    await cache.setLayout(reader.toc.blockCount, reader.toc.storedDataLength);
    const fs = new LayerFs({ toc: reader.toc, reader, readTimeoutMs: 5000 });
    mp = join(dir, 'mnt');
    m = await new NativeFuseBinding().mount(mp, fs, {
      mkdir: true,
      fsname: 'dfnode-direct-test',
      direct: { toc: reader.toc, blocks: cache },
    });
  });

  afterAll(async () => {
    try {
      for (const fh of handles.values()) await fh.close();
      await m?.unmount();
      await cache?.close();
      await reader?.close();
    } finally {
      await cleanup?.();
    }
  });

  it('the layer has Raw and LZ4 blocks, and files that start and end inside blocks', () => {
    const codecs = new Set(Array.from({ length: reader.toc.blockCount }, (_, i) => reader.toc.blockCodec(i)));
    expect(codecs).toEqual(new Set([Codec.Raw, Codec.Lz4Block]));
    const st = reader.toc.stat(reader.toc.lookup('mixed')!);
    expect(st.dataOffset % (16 * 1024)).not.toBe(0);
  });

  it("the tables carry the blocks' SHA-256 unless verify is false", () => {
    const n = reader.toc.blockCount;
    const t = directTables({ toc: reader.toc, blocks: cache });
    expect(t?.digests?.length).toBe(n * 32);
    expect(Buffer.from(t!.digests!.subarray(32, 64)).equals(reader.toc.blockSha256(1))).toBe(true);
    expect(directTables({ toc: reader.toc, blocks: cache, verify: false })?.digests).toBeUndefined();
  });

  it('with nothing cached every read goes to JS and is right', async () => {
    const before = reader.reads;
    expect((await pread('mixed', 0, 100_000)).equals(expected('mixed', 0, 100_000))).toBe(true);
    expect((await pread('raw', 5, 70_000)).equals(expected('raw', 5, 70_000))).toBe(true);
    expect(reader.reads - before).toBeGreaterThanOrEqual(2);
    expect(m.info().directReads).toBe(0);
  });

  it('reads of cached blocks are answered in C: same bytes at random offsets and sizes, no JS read', async () => {
    for (const name of ['raw', 'lz4', 'mixed', 'tiny', 'tail'])
      for (const u of blocksOf(name)) await putUnit(u);
    const jsBefore = reader.reads;
    const infoBefore = m.info();
    const r = rng(42);
    let n = 0;
    for (const name of ['raw', 'lz4', 'mixed', 'tail']) {
      const f = FILES[name]!;
      for (let k = 0; k < 60; k++) {
        const off = r(f.length);
        const len = 1 + r(k % 3 === 0 ? 300_000 : 40_000);
        const got = await pread(name, off, len);
        expect(got.equals(expected(name, off, len)), `${name} ${off}+${len}`).toBe(true);
        n++;
      }
      // whole file in one request, and block-aligned pieces
      expect((await pread(name, 0, f.length)).equals(f)).toBe(true);
      expect((await pread(name, 16 * 1024, 16 * 1024)).equals(expected(name, 16 * 1024, 16 * 1024))).toBe(
        true,
      );
      n += 2;
    }
    expect((await pread('tiny', 0, 4096)).toString()).toBe('hello\n');
    expect(reader.reads).toBe(jsBefore);
    const info = m.info();
    expect(info.directReads - infoBefore.directReads).toBeGreaterThanOrEqual(n);
    expect(info.directBytes).toBeGreaterThan(infoBefore.directBytes);
  });

  it('EOF: past the end is empty, a read across it is cut at the file size', async () => {
    const jsBefore = reader.reads;
    const f = FILES.mixed!;
    expect((await pread('mixed', f.length, 4096)).length).toBe(0);
    expect((await pread('mixed', f.length + 10_000, 4096)).length).toBe(0);
    expect((await pread('mixed', f.length - 100, 4096)).equals(f.subarray(f.length - 100))).toBe(true);
    expect((await pread('tail', 1, 1 << 20)).equals(FILES.tail!.subarray(1))).toBe(true);
    expect(reader.reads).toBe(jsBefore);
  });

  it('an invalidated block goes back to JS; once present again C serves it', async () => {
    const f = FILES.mixed!;
    const at = 300_000;
    const [u] = blocksOf('mixed', at, 1);
    cache.invalidate(u!, reader.toc.blockStoredLength(u!));
    let js = reader.reads;
    expect((await pread('mixed', at, 1)).equals(f.subarray(at, at + 1))).toBe(true);
    // a read that only touches the neighbours stays in C
    const nb = reader.toc.stat(reader.toc.lookup('mixed')!);
    const bStart = reader.toc.blockStreamOffset(u!) - nb.dataOffset;
    expect((await pread('mixed', bStart - 1000, 1000)).equals(f.subarray(bStart - 1000, bStart))).toBe(true);
    expect(reader.reads).toBe(js + 1);
    // a read spanning it and its neighbours goes to JS as a whole
    expect(
      (await pread('mixed', bStart - 5000, 40_000)).equals(expected('mixed', bStart - 5000, 40_000)),
    ).toBe(true);
    expect(reader.reads).toBe(js + 2);
    await putUnit(u!);
    js = reader.reads;
    expect(
      (await pread('mixed', bStart - 5000, 40_000)).equals(expected('mixed', bStart - 5000, 40_000)),
    ).toBe(true);
    expect(reader.reads).toBe(js);
  });

  it('a cached LZ4 block that does not decode falls back to JS (which has the right bytes)', async () => {
    const toc = reader.toc;
    const u = blocksOf('lz4').find((i) => toc.blockCodec(i) === Codec.Lz4Block)!;
    const fh = await open(cache.dataPath, 'r+');
    try {
      await fh.write(Buffer.alloc(toc.blockStoredLength(u) - 4, 0xff), 0, undefined, toc.blockOffset(u) + 4);
    } finally {
      await fh.close();
    }
    const st = toc.stat(toc.lookup('lz4')!);
    const off = Math.max(0, toc.blockStreamOffset(u) - st.dataOffset);
    const js = reader.reads;
    const fb = m.info().directFallbacks;
    expect((await pread('lz4', off, 8192)).equals(expected('lz4', off, 8192))).toBe(true);
    expect(reader.reads).toBe(js + 1);
    expect(m.info().directFallbacks).toBe(fb + 1);
    await cache.drop(); // the data file is wrong now: start over
  });

  it('after drop nothing is served from C; a complete cache is served from C', async () => {
    let js = reader.reads;
    expect((await pread('raw', 0, 1000)).equals(expected('raw', 0, 1000))).toBe(true);
    expect(reader.reads).toBe(js + 1);
    for (let u = 0; u <= reader.toc.blockCount; u++) await putUnit(u);
    expect(cache.isComplete).toBe(true);
    js = reader.reads;
    for (const name of ['raw', 'lz4', 'mixed', 'tail'])
      expect((await pread(name, 0, FILES[name]!.length)).equals(FILES[name]!)).toBe(true);
    expect(reader.reads).toBe(js);
  });

  it('unmount is clean and later presence updates are ignored', async () => {
    for (const fh of handles.values()) await fh.close();
    handles.clear();
    const last = m.info();
    await m.unmount();
    expect(m.info().alive).toBe(false);
    expect(m.info().directReads).toBe(last.directReads);
    cache.invalidate(0, reader.toc.blockStoredLength(0));
    await putUnit(0);
  });
});

describe.skipIf(req.skip)('NativeFuseBinding over a layer (kernel)', () => {
  /**
   * Mounts a LayerFs over a layer's reader (as the daemon does, with or without its cache as `direct`), reads one
   * file (the first read goes to JS and starts background fill), waits until the blob is complete and verified,
   * then reads every file again: returns how many of those reads reached JS and the source, and the mount's
   * direct-read count.
   */
  async function readAfterFill(
    direct: boolean,
    extra: NativeMountOptions = {},
    rot?: string,
  ): Promise<{ js: number; source: number; directReads: number; files: number; verifyFailures: number }> {
    const { dir, cleanup } = await tempDir('dfnode-direct-fetcher-');
    try {
      const tb = await makeBlob(dir);
      const src = new FakeSource(tb.bytes);
      const cache = await BlobCache.open({
        dir: join(dir, 'cache'),
        digest: tb.blob.digest,
        size: tb.blob.size,
      });
      const core = await LayerCore.open({
        blob: tb.blob,
        cache,
        sources: [src],
        memoryCache: new BlockMemoryCache(1 << 20),
        expectedTocDigest: tb.tocDigest,
      });
      let jsReads = 0;
      const reader = {
        toc: core.toc,
        read: (ino: number, offset: number, length: number, signal?: AbortSignal) => {
          jsReads++;
          return core.reader.read(ino, offset, length, signal);
        },
      };
      const m = await new NativeFuseBinding().mount(
        join(dir, 'mnt'),
        new LayerFs({ toc: core.toc, reader }),
        { mkdir: true, ...(direct ? { direct: { toc: core.toc, blocks: cache } } : {}), ...extra },
      );
      try {
        const first = await readWhole(join(dir, 'mnt', 'etc/f0'));
        expect(first.equals(tb.files.get('etc/f0')!)).toBe(true);
        await core.fill.whenComplete();
        expect(cache.isComplete).toBe(true);
        if (rot) {
          // bit rot in the cache file after fill: the last stored byte of the block in the middle of a file
          const st = core.toc.stat(tb.ino(rot));
          const [u] = core.toc.blocksForRange(st.dataOffset + Math.floor(st.size / 2), 1);
          const at = core.toc.blockOffset(u) + core.toc.blockStoredLength(u) - 1;
          const fh = await open(cache.dataPath, 'r+');
          try {
            const b = Buffer.alloc(1);
            await fh.read(b, 0, 1, at);
            b[0] = b[0]! ^ 0x5a;
            await fh.write(b, 0, 1, at);
          } finally {
            await fh.close();
          }
        }
        const js = jsReads;
        const requests = src.requests.length;
        for (const [path, content] of tb.files)
          expect((await readWhole(join(dir, 'mnt', path))).equals(content)).toBe(true);
        return {
          js: jsReads - js,
          source: src.requests.length - requests,
          directReads: m.info().directReads,
          files: tb.files.size,
          verifyFailures: m.info().directVerifyFailures,
        };
      } finally {
        await m.unmount();
        await core.close();
        await cache.close();
      }
    } finally {
      await cleanup();
    }
  }

  it('given its cache as `direct`: after fill, reads reach neither JS nor the source', async () => {
    const r = await readAfterFill(true);
    expect(r.js).toBe(0);
    expect(r.source).toBe(0);
    expect(r.directReads).toBeGreaterThanOrEqual(r.files);
  });

  it('a block that rotted in the cache file is caught at its first read from C, and refetched', async () => {
    const r = await readAfterFill(true, {}, 'usr/big1');
    // every file read back right (readAfterFill compares them); the rotted block went to JS and the source
    expect(r.verifyFailures).toBe(1);
    expect(r.js).toBeGreaterThanOrEqual(1);
    expect(r.source).toBeGreaterThanOrEqual(1);
  });

  it('without `direct` every read goes through JS (served from the cache there)', async () => {
    const r = await readAfterFill(false);
    expect(r.js).toBeGreaterThanOrEqual(r.files);
    expect(r.source).toBe(0);
    expect(r.directReads).toBe(0);
  });

  it('directReads: false turns direct reads off even when `direct` is given', async () => {
    const r = await readAfterFill(true, { directReads: false });
    expect(r.js).toBeGreaterThanOrEqual(r.files);
    expect(r.directReads).toBe(0);
  });
});

/** A whole file with O_DIRECT reads (each one a FUSE read). */
async function readWhole(path: string): Promise<Buffer> {
  const fh = await open(path, constants.O_RDONLY | constants.O_DIRECT);
  try {
    const { size } = await fh.stat();
    const buf = Buffer.alloc(size);
    let at = 0;
    while (at < size) {
      const { bytesRead } = await fh.read(buf, at, Math.min(size - at, 64 * 1024), at);
      if (bytesRead === 0) break;
      at += bytesRead;
    }
    return buf.subarray(0, at);
  } finally {
    await fh.close();
  }
}
