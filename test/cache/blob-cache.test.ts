import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readlinkSync } from 'node:fs';
import { mkdir, open, readFile, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it, vi } from 'vitest';
import { Bitmap } from '../../src/cache/bitmap.js';
import { BlobCache, defaultCacheIo, type CacheIo } from '../../src/cache/blob-cache.js';
import { isDfError } from '../../src/errors.js';
import { sha256Digest } from '../helpers/digest.js';
import { tempDir } from '../helpers/temp.js';
import { flipBits } from '../helpers/bytes.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

/** A fake "blob": 8 units of 1000 bytes + a 500-byte TOC unit. */
const blob = Buffer.alloc(8500);
for (let i = 0; i < blob.length; i++) blob[i] = (i * 7 + (i >> 8)) & 0xff;
const digest = sha256Digest(blob);
const unit = (u: number) => (u < 8 ? blob.subarray(u * 1000, u * 1000 + 1000) : blob.subarray(8000));

async function dir(): Promise<string> {
  const t = await tempDir('dfnode-cache-');
  cleanups.push(t.cleanup);
  return join(t.dir, 'blob');
}

async function openCache(d: string, extra: { io?: CacheIo; flushIntervalMs?: number } = {}) {
  const c = await BlobCache.open({ dir: d, digest, size: blob.length, flushIntervalMs: 1e9, ...extra });
  await c.setLayout(8, 8000);
  return c;
}

describe('Bitmap', () => {
  it('round-trips and rejects torn or garbled encodings', () => {
    const b = new Bitmap(13);
    b.set(0);
    b.set(12);
    b.set(5);
    expect(b.set(5)).toBe(false);
    const enc = b.encode(1234);
    const dec = Bitmap.decode(enc, 13)!;
    expect(dec.filledBytes).toBe(1234);
    expect(dec.bitmap.present).toBe(3);
    expect([0, 5, 12].every((i) => dec.bitmap.has(i))).toBe(true);
    expect(dec.bitmap.nextClear(0)).toBe(1);
    expect(Bitmap.decode(enc.subarray(0, enc.length - 1), 13)).toBeUndefined();
    expect(Bitmap.decode(enc, 14)).toBeUndefined();
    for (let i = 0; i < enc.length; i++) {
      const bad = Buffer.from(enc);
      flipBits(bad, i, 1);
      expect(Bitmap.decode(bad, 13)).toBeUndefined();
    }
  });

  it('takes raw announced bits (ignoring bits past its size) and counts an intersection', () => {
    // 13 units; the last byte also sets bits 13..15, which are not units
    const b = Bitmap.fromBits(Uint8Array.from([0b1010_0001, 0b1111_1001, 0xff]), 13);
    expect(b.present).toBe(6);
    expect([0, 5, 7, 8, 11, 12].every((i) => b.has(i))).toBe(true);
    expect(b.has(13)).toBe(false);
    expect(b.nextClear(0)).toBe(1);
    // short input: the rest is clear
    expect(Bitmap.fromBits(Uint8Array.from([0xff]), 13).present).toBe(8);
    const other = new Bitmap(13);
    for (const i of [0, 1, 7, 12]) other.set(i);
    expect(b.countAnd(other.bits)).toBe(3);
    expect(b.countAnd(new Uint8Array(0))).toBe(0);
  });

  it('refuses to set or clear a unit outside it (the count stays right)', () => {
    const b = new Bitmap(13);
    for (const i of [13, 15, -1, 1.5, 100]) {
      expect(() => b.set(i)).toThrow(/outside 0..12/);
      expect(() => b.clear(i)).toThrow(/outside 0..12/);
      expect(b.has(i)).toBe(false);
    }
    expect(b.present).toBe(0);
  });
});

describe('BlobCache', () => {
  it('writes, reads, flushes and resumes', async () => {
    const d = await dir();
    const c = await openCache(d);
    for (const u of [0, 1, 5, 8]) await c.write(u, u * 1000, unit(u));
    expect(c.has(5)).toBe(true);
    expect(c.filledBytes).toBe(3500);
    expect((await c.read(5000, 1000)).equals(unit(5))).toBe(true);
    await c.close();
    const r = await openCache(d);
    expect(r.presentUnits).toBe(4);
    expect(r.filledBytes).toBe(3500);
    expect(r.nextMissing(0)).toBe(2);
    expect(r.layout).toEqual({ blockCount: 8, tocOffset: 8000 });
    await r.close();
  });

  it('persists only what was synced: writes after the last flush are lost in a crash', async () => {
    const d = await dir();
    const c = await openCache(d);
    await c.write(0, 0, unit(0));
    await c.flush();
    await c.write(1, 1000, unit(1)); // never flushed: the process dies
    const r = await openCache(d);
    expect(r.has(0)).toBe(true);
    expect(r.has(1)).toBe(false);
    await r.close();
  });

  it('flushes the bitmap on its timer', async () => {
    const d = await dir();
    const c = await openCache(d, { flushIntervalMs: 5 });
    await c.write(2, 2000, unit(2));
    for (let i = 0; i < 200 && !(await readFile(join(d, 'bitmap')).catch(() => undefined)); i++)
      await new Promise((r) => setTimeout(r, 5));
    const dec = Bitmap.decode(await readFile(join(d, 'bitmap')), 9)!;
    expect(dec.bitmap.has(2)).toBe(true);
    await c.close();
  });

  it('a different size or a garbled meta file starts from nothing', async () => {
    const d = await dir();
    const c = await openCache(d);
    await c.write(0, 0, unit(0));
    await c.close();
    const other = await BlobCache.open({ dir: d, digest, size: blob.length + 1 });
    expect(other.layout).toBeUndefined();
    expect(other.presentUnits).toBe(0);
    await other.close();
  });

  it('an open aborted part-way rejects only once its file operations are done; no file is left open', async () => {
    const fds = () => readdirSync('/proc/self/fd').length;
    const before = fds();
    // aborted at each point of the open in turn: after 0, 1, 2, ... turns of the event loop
    for (let turns = 0; turns < 12; turns++) {
      const d = await dir();
      const ac = new AbortController();
      const p = BlobCache.open({ dir: d, digest, size: blob.length }, ac.signal);
      for (let i = 0; i < turns; i++) await new Promise((r) => setImmediate(r));
      ac.abort();
      const c = await p.catch((err: unknown) => {
        expect(isDfError(err) && err.code).toBe('ABORTED');
        return undefined;
      });
      await c?.close();
      // nothing changes in the directory after the open settled
      const listing = () => (existsSync(d) ? readdirSync(d).sort() : []);
      const settled = listing();
      await new Promise((r) => setTimeout(r, 50));
      expect(listing()).toEqual(settled);
    }
    expect(fds()).toBe(before);
  });

  it('a cache in a new directory opens and takes its layout without fsync; the first flush makes the meta durable first', async () => {
    const d = await dir();
    const probe = await open(join(d, '..', 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { sync: () => Promise<void> };
    await probe.close();
    const synced: string[] = [];
    const real = proto.sync;
    const spy = vi.spyOn(proto, 'sync').mockImplementation(async function (this: { fd: number }) {
      synced.push(readlinkSync(`/proc/self/fd/${this.fd}`));
      return real.call(this);
    });
    try {
      const c = await openCache(d);
      await c.write(0, 0, unit(0));
      expect(synced).toEqual([]);
      await c.flush();
      // meta (file, directory) before the bitmap (file, directory) that is read under its layout
      expect(synced.map((p) => p.replace(d, 'D'))).toEqual(['D/meta.json.tmp', 'D', 'D/bitmap.tmp', 'D']);
      await c.close();
      synced.length = 0;
      // an existing directory: the layout is written durably at once
      const again = await BlobCache.open({ dir: d, digest, size: blob.length + 1 });
      expect(synced.length).toBeGreaterThan(0);
      await again.close();
    } finally {
      spy.mockRestore();
    }
    const back = await openCache(d);
    expect(back.presentUnits).toBe(0);
    await back.close();
  });

  it('writes adjacent units in one write; counts only units that were missing; rejects a bad span', async () => {
    const d = await dir();
    const writes: number[] = [];
    const io: CacheIo = {
      async write(fh, data, pos) {
        writes.push(data.length);
        return defaultCacheIo.write(fh, data, pos);
      },
    };
    const c = await openCache(d, { io });
    const seen: number[] = [];
    c.addUnitListener({ present: (u) => seen.push(u), reset: () => undefined });
    await c.write(3, 3000, unit(3));
    const span = blob.subarray(2000, 5000);
    const units = [2, 3, 4].map((u) => ({ unit: u, length: 1000 }));
    await c.writeUnits(units, 2000, span);
    expect(writes).toEqual([1000, 3000]);
    expect(seen).toEqual([3, 2, 4]);
    expect(c.filledBytes).toBe(3000);
    expect((await c.read(2000, 3000)).equals(span)).toBe(true);
    // all present: nothing written
    await c.writeUnits(units, 2000, span);
    expect(writes.length).toBe(2);
    // lengths that do not add up to the data, or a unit out of range
    await expect(c.writeUnits([{ unit: 5, length: 999 }], 5000, unit(5))).rejects.toSatisfy((e) =>
      isDfError(e, 'INVALID_ARGUMENT'),
    );
    await expect(c.writeUnits([{ unit: 9, length: 500 }], 8000, unit(8))).rejects.toSatisfy((e) =>
      isDfError(e, 'INVALID_ARGUMENT'),
    );
    expect(c.has(5)).toBe(false);
    await c.close();
  });

  it('ENOSPC: NO_SPACE, nothing claimed, persisted bitmap unchanged', async () => {
    const d = await dir();
    let full = false;
    const io: CacheIo = {
      async write(fh, data, pos) {
        if (full) {
          await defaultCacheIo.write(fh, data.subarray(0, 3), pos);
          throw Object.assign(new Error('no space'), { code: 'ENOSPC' });
        }
        return defaultCacheIo.write(fh, data, pos);
      },
    };
    const c = await openCache(d, { io });
    await c.write(0, 0, unit(0));
    await c.flush();
    const before = await readFile(join(d, 'bitmap'));
    full = true;
    const err = await c.write(1, 1000, unit(1)).catch((e) => e);
    expect(isDfError(err, 'NO_SPACE')).toBe(true);
    expect(c.has(1)).toBe(false);
    expect(c.filledBytes).toBe(1000);
    await c.flush();
    expect((await readFile(join(d, 'bitmap'))).equals(before)).toBe(true);
    await c.close();
  });

  it('verifyComplete: matches the digest, or drops the cache on mismatch', async () => {
    const d = await dir();
    const c = await openCache(d);
    for (let u = 0; u <= 8; u++) await c.write(u, u < 8 ? u * 1000 : 8000, unit(u));
    expect(c.isComplete).toBe(true);
    expect(await c.verifyComplete()).toEqual({ ok: true, actual: digest });
    expect(c.verified).toBe(true);
    expect(sha256Digest(await readFile(join(d, 'data')))).toBe(digest);
    await c.close();

    const d2 = await dir();
    const bad = await openCache(d2);
    for (let u = 0; u <= 8; u++) {
      const b = Buffer.from(unit(u));
      if (u === 3) flipBits(b, 10, 1);
      await bad.write(u, u < 8 ? u * 1000 : 8000, b);
    }
    const res = await bad.verifyComplete();
    expect(res.ok).toBe(false);
    expect(bad.presentUnits).toBe(0);
    expect(bad.filledBytes).toBe(0);
    await bad.close();
    const again = await openCache(d2);
    expect(again.presentUnits).toBe(0);
    await again.close();
  });
});

const asRoot = process.getuid?.() === 0;
if (!asRoot) console.log('skipping tmpfs full-disk test: needs root to mount a small tmpfs');

describe.skipIf(!asRoot)('BlobCache on a full tmpfs', () => {
  it('a real ENOSPC gives NO_SPACE and a consistent cache', async () => {
    const t = await tempDir('dfnode-tmpfs-');
    const mnt = join(t.dir, 'mnt');
    await mkdir(mnt);
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt]);
    } catch (err) {
      console.log(`skipping tmpfs test: mount failed (${(err as Error).message})`);
      await t.cleanup();
      return;
    }
    try {
      const big = Buffer.alloc(1024 * 1024, 7);
      const d = join(mnt, 'blob');
      const c = await BlobCache.open({
        dir: d,
        digest: sha256Digest(big),
        size: big.length,
        flushIntervalMs: 1e9,
      });
      await c.setLayout(32, 32 * 32768 - 1000);
      let err: unknown;
      let u = 0;
      for (; u < 32; u++) {
        try {
          await c.write(
            u,
            u * 32768,
            big.subarray(u * 32768, u * 32768 + Math.min(32768, 32 * 32768 - 1000 - u * 32768)),
          );
          await c.flush();
        } catch (e) {
          err = e;
          break;
        }
      }
      expect(isDfError(err, 'NO_SPACE')).toBe(true);
      expect(c.has(u)).toBe(false);
      const present = c.presentUnits;
      await c.close().catch(() => {});
      const r = await BlobCache.open({ dir: d, digest: sha256Digest(big), size: big.length });
      expect(r.presentUnits).toBeLessThanOrEqual(present);
      for (let i = 0; i < 32; i++) {
        if (!r.has(i)) continue;
        expect((await r.read(i * 32768, 1000)).equals(big.subarray(i * 32768, i * 32768 + 1000))).toBe(true);
      }
      await r.close();
    } finally {
      execFileSync('umount', [mnt]);
      await rmdir(mnt).catch(() => {});
      await t.cleanup();
    }
  });
});
