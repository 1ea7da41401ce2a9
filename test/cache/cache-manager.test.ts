import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CacheManager } from '../../src/cache/cache-manager.js';
import { DirLock } from '../../src/cache/dir-lock.js';
import { realTimers, type Timers } from '../../src/util/timers.js';
import { sha256Digest } from '../helpers/digest.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

let now = 1_000_000;
const timers: Timers = { ...realTimers, now: () => now };

async function manager(high: number, low: number, dir?: string) {
  if (!dir) {
    const t = await tempDir('dfnode-cm-');
    cleanups.push(t.cleanup);
    dir = t.dir;
  }
  const m = new CacheManager({ dir, highWatermark: high, lowWatermark: low, timers, flushIntervalMs: 1e9 });
  await m.init();
  return m;
}

/** Opens a fake 10-unit blob of 1000-byte units and fills `units` of them. */
async function fill(m: CacheManager, name: string, units: number) {
  const blob = { digest: sha256Digest(Buffer.from(name)), size: 10_000 };
  const c = await m.open(blob);
  await c.setLayout(9, 9000);
  for (let u = 0; u < units; u++) await c.write(u, u * 1000, Buffer.alloc(1000, u));
  return c;
}

describe('CacheManager', () => {
  it('lists blobs and keeps totals across restarts', async () => {
    const t = await tempDir('dfnode-cm-');
    cleanups.push(t.cleanup);
    const m = await manager(1e9, 1e9, t.dir);
    const a = await fill(m, 'a', 3);
    const b = await fill(m, 'b', 10);
    expect(m.totalBytes).toBe(13_000);
    await m.release(a);
    const l = m.list();
    expect(l.map((x) => [x.filledBytes, x.present, x.blocks, x.complete, x.inUse])).toEqual(
      expect.arrayContaining([
        [3000, 3, 10, false, false],
        [10_000, 10, 10, true, true],
      ]),
    );
    await m.release(b);
    await m.close();
    const m2 = await manager(1e9, 1e9, t.dir);
    expect(m2.totalBytes).toBe(13_000);
    expect(m2.list().find((x) => x.complete)?.present).toBe(10);
    await m2.close();
  });

  it('shares one BlobCache per blob with reference counts', async () => {
    const m = await manager(1e9, 1e9);
    cleanups.push(() => m.close());
    const blob = { digest: sha256Digest(Buffer.from('x')), size: 10_000 };
    const [c1, c2] = await Promise.all([m.open(blob), m.open(blob)]);
    expect(c1).toBe(c2);
    await m.release(c1);
    expect(m.list()[0]!.inUse).toBe(true);
    expect(await m.evict(blob.digest)).toBe(false);
    await m.release(c2);
    expect(m.list()[0]!.inUse).toBe(false);
    expect(await m.evict(blob.digest)).toBe(true);
    expect(m.list()).toEqual([]);
  });

  it('above the high watermark evicts unused blobs, least recently used first, down to the low one', async () => {
    const m = await manager(25_000, 15_000);
    cleanups.push(() => m.close());
    now = 1000;
    const a = await fill(m, 'a', 8);
    now = 2000;
    const b = await fill(m, 'b', 8);
    now = 3000;
    const c = await fill(m, 'c', 4);
    now = 4000;
    await m.release(b); // b last used at 4000
    now = 5000;
    await m.release(a); // a last used at 5000 (more recent than b)
    const inUse = await fill(m, 'd', 0);
    now = 6000;
    // c is in use; push the total over the high watermark
    for (let u = 4; u < 10; u++) await c.write(u, u * 1000, Buffer.alloc(1000));
    for (let u = 0; u < 2; u++) await inUse.write(u, u * 1000, Buffer.alloc(1000));
    await m.settled();
    const left = m.list().map((x) => x.digest);
    const d = (s: string) => sha256Digest(Buffer.from(s));
    // total was 8+8+10+2 = 28k > 25k: b (LRU) goes first -> 20k, then a -> 12k < 15k
    expect(left).not.toContain(d('b'));
    expect(left).not.toContain(d('a'));
    expect(left).toEqual(expect.arrayContaining([d('c'), d('d')]));
    expect(m.totalBytes).toBe(12_000);
  });

  it('evicts only unused blobs, even when that is not enough', async () => {
    const m = await manager(5_000, 1_000);
    cleanups.push(() => m.close());
    const a = await fill(m, 'a', 10);
    await m.settled();
    expect(m.list().length).toBe(1);
    expect(a.filledBytes).toBe(10_000);
    const r = await m.gc();
    expect(r.evicted).toEqual([]);
    await m.release(a);
    await m.settled();
    expect(m.list()).toEqual([]);
  });

  it('full of blobs in use, asks onFull to give some back and then evicts them (preheated layers held)', async () => {
    const m = await manager(15_000, 5_000);
    const a = await fill(m, 'a', 10);
    now += 1000;
    const b = await fill(m, 'b', 4);
    // nothing to give back: the pass ends above the high watermark
    let asked = 0;
    m.onFull = async () => (asked++, false);
    const c = await fill(m, 'c', 4);
    await m.settled();
    expect(asked).toBeGreaterThan(0);
    expect(m.totalBytes).toBe(18_000);
    // a holder (PreheatHolds.releaseOldest) gives back its oldest reference: `a` is evicted
    const held = [a, b];
    m.onFull = async () => {
      const x = held.shift();
      if (!x) return false;
      await m.release(x);
      return true;
    };
    await c.write(4, 4000, Buffer.alloc(1000, 4));
    await m.settled();
    expect(held).toEqual([b]);
    expect(m.list().map((x) => x.digest)).not.toContain(a.digest);
    expect(m.totalBytes).toBe(9_000);
    // below the high watermark: nothing more is asked
    m.onFull = async () => {
      throw new Error('not asked below the high watermark');
    };
    await c.write(5, 5000, Buffer.alloc(1000, 5));
    await m.settled();
    await m.release(b);
    await m.release(c);
    await m.close();
  });

  it('gc() evicts every unused blob', async () => {
    const m = await manager(1e9, 1e9);
    cleanups.push(() => m.close());
    const a = await fill(m, 'a', 2);
    const b = await fill(m, 'b', 3);
    await m.release(a);
    const r = await m.gc();
    expect(r).toEqual({ evicted: [a.digest], freedBytes: 2000 });
    expect(m.list().map((x) => x.digest)).toEqual([b.digest]);
  });

  it('locks the directory against a second process; a stale lock is taken over', async () => {
    const t = await tempDir('dfnode-cm-');
    cleanups.push(t.cleanup);
    const m = await manager(1e9, 1e9, t.dir);
    await expect(manager(1e9, 1e9, t.dir)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    await m.close();
    // a lock file left by a dead process
    await writeFile(join(t.dir, 'lock'), '999999999\n');
    const l = await DirLock.acquire(t.dir);
    await l.release();
    const m2 = await manager(1e9, 1e9, t.dir);
    await m2.close();
  });
});
