/**
 * Reads deep into a large layer find the peers that hold them. A node used to ask the tracker about its
 * first 4,096 missing units only, and the tracker leaves out holders with none of the units asked about:
 * in a 1 GiB layer (16,384 blocks of 64 KiB) a peer holding only blocks near the end was never named, so
 * a read there skipped the peers. Real tracker (over HTTP on a block server), real block servers, a real
 * 1 GiB DFB layer.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import { DfbReader } from '../../src/blob/reader.js';
import type { Toc } from '../../src/blob/toc.js';
import { EntryType } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { loadConfig } from '../../src/config.js';
import { isSourceUnavailable, type BlobRef } from '../../src/fetch/types.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { BlockServer } from '../../src/p2p/block-server.js';
import { TrackerState } from '../../src/p2p/tracker-state.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';
import { base, dirMeta } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';

const TOKEN = 'deep-lookup-token';
const MiB = 1 << 20;
const FILES = 16;
const FILE_SIZE = 64 * MiB;

/** 16 files of 64 MiB (a distinct first line, then zeros: cheap to compress), 64 KiB blocks. */
async function writeGiBLayer(dir: string): Promise<{ path: string; blob: BlobRef }> {
  const path = join(dir, 'big.dfb');
  const w = new DfbWriter({ out: path, tmpDir: dir, workers: 2, blockSize: 64 * 1024 });
  w.addEntry(dirMeta('data'));
  const zeros = Buffer.alloc(MiB);
  for (let i = 0; i < FILES; i++) {
    const head = Buffer.from(`file ${i}\n`);
    async function* content(): AsyncGenerator<Buffer> {
      yield head;
      for (let left = FILE_SIZE - head.length; left > 0; left -= MiB)
        yield zeros.subarray(0, Math.min(MiB, left));
    }
    await w.addFile({ ...base, path: `data/part-${i}`, type: EntryType.File, size: FILE_SIZE }, content());
  }
  const r = await w.finish();
  return { path, blob: { digest: r.digest, size: r.size } };
}

describe('tracker lookups of a 1 GiB layer', () => {
  let cleanup: () => Promise<void> = async () => undefined;
  let dir = '';
  let blob: BlobRef;
  let bytes: Buffer;
  let toc: Toc;
  const closers: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfnode-deep-lookup-'));
    const w = await writeGiBLayer(dir);
    blob = w.blob;
    bytes = await readFile(w.path);
    const rr = await FileRangeReader.open(w.path);
    toc = (await DfbReader.open(rr)).toc;
    await rr.close();
  }, 120_000);

  afterAll(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    await cleanup();
  });

  it('names a peer that holds only blocks past the first 4,096 missing ones, and the read goes to it', async () => {
    expect(toc.blockCount).toBe((FILES * FILE_SIZE) / (64 * 1024));
    // the tracker is served on its seed's block port (tracker-http.ts); no seed blob is needed here
    const seedServer = new BlockServer({
      provider: { get: async () => undefined },
      clusterToken: TOKEN,
      tracker: new TrackerState(),
    });
    const seedPort = Number((await seedServer.listen('127.0.0.1:0')).split(':')[1]);
    closers.push(() => seedServer.close());
    const node = () =>
      new P2pNode({
        config: loadConfig({
          env: {},
          flags: {
            p2p: {
              seeds: [`127.0.0.1:${seedPort}`],
              clusterToken: TOKEN,
              listen: '127.0.0.1:0',
              announceIntervalMs: 200,
            },
          },
        }),
      });
    const layout = new UnitLayout(toc, blob.size);
    const open = async (name: string) => {
      const cache = await BlobCache.open({ dir: join(dir, name), digest: blob.digest, size: blob.size });
      await cache.setLayout(toc.blockCount, layout.offset(toc.blockCount));
      closers.push(() => cache.close());
      return cache;
    };

    // A read one file near the end of the layer: it holds 16 blocks, all past unit 15,000
    const a = node();
    closers.push(() => a.close());
    await a.start();
    const aCache = await open('a');
    const first = 15_000;
    const last = first + 15;
    for (let u = first; u <= last; u++) {
      const off = layout.offset(u);
      await aCache.write(u, off, bytes.subarray(off, off + layout.length(u)));
    }
    const aMember = a.join({ blob, toc, cache: aCache });
    closers.push(() => aMember.leave());

    // B has nothing: its first 4,096 missing units are 0..4095, none of which A holds
    const b = node();
    closers.push(() => b.close());
    await b.start();
    const bCache = await open('b');
    const bMember = b.join({ blob, toc, cache: bCache });
    closers.push(() => bMember.leave());

    const off = layout.offset(first + 4);
    const len = layout.offset(last + 1) - off;
    const signal = new AbortController().signal;
    let got: Buffer | undefined;
    let lastErr: unknown;
    const deadline = Date.now() + 15_000;
    while (!got && Date.now() < deadline) {
      try {
        got = await b.peers.fetch(blob, off, len, signal);
      } catch (err) {
        if (!isSourceUnavailable(err)) throw err;
        lastErr = err;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    if (!got) throw new Error(`B never found A's blocks through the tracker: ${String(lastErr)}`);
    expect(got.equals(bytes.subarray(off, off + len))).toBe(true);
    // and a range nobody holds is still unavailable from peers (the fetcher goes on to the seed)
    await expect(b.peers.fetch(blob, layout.offset(10), layout.length(10), signal)).rejects.toSatisfy(
      isSourceUnavailable,
    );
  }, 60_000);

  it('a tracker answers a want bitmap with holders of any unit in it, and refuses a bitmap of the wrong size', () => {
    const t = new TrackerState();
    const units = toc.blockCount + 1;
    const bits = new Uint8Array(Math.ceil(units / 8));
    bits[15_000 >> 3] = 1 << (15_000 & 7);
    t.announce(
      {
        blob: blob.digest,
        units,
        peer_id: 'a'.repeat(16),
        address: '127.0.0.1:9',
        zone: '',
        load: 0,
        full: true,
        bitmap: bits,
        added: [],
        leave: false,
        failed_peers: [],
      },
      '127.0.0.1',
    );
    const first4096 = Array.from({ length: 4096 }, (_, i) => i);
    const ask = { blob: blob.digest, peer_id: 'b'.repeat(16), zone: '', max_peers: 8 };
    // the bounded list cannot reach unit 15,000; the bitmap can
    expect(t.lookup({ ...ask, want: first4096 }).holders).toHaveLength(0);
    const want = new Uint8Array(bits.length).fill(0xff);
    expect(t.lookup({ ...ask, want: [], want_bitmap: want }).holders.map((h) => h.address)).toEqual([
      '127.0.0.1:9',
    ]);
    expect(() => t.lookup({ ...ask, want: [], want_bitmap: new Uint8Array(3) })).toThrow(/bitmap/);
  });
});
