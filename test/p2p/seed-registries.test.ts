/**
 * A seed fetches only from the registries its configuration allows, with the size the registry gives:
 * a node's hints (repository, size) cannot point it at another host or reset its cached copy.
 * Real Seed and block client over loopback; the registry is an in-memory RegistryClient.
 */
import { pino } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { isSourceUnavailable } from '../../src/fetch/types.js';
import { manualTimers } from '../helpers/manual-timers.js';
import { seedHarness } from './seed-harness.js';

const { setup, startSeed } = seedHarness('seed-registries-token');

describe('seed registries', () => {
  it('refuses a repository on a registry its configuration does not list, without contacting it', async () => {
    const { dir, tb, get } = await setup();
    const s = await startSeed(dir, tb, ['good.example:5000']);
    const size = String(tb.blob.size);
    await expect(get(s.blocks, 0, 100, { repo: 'evil.example/x', size })).rejects.toSatisfy(
      (e) => isSourceUnavailable(e) && /HTTP 403 .*p2p\.seedRegistries/.test((e as Error).message),
    );
    await expect(get(s.blocks, 0, 100, { repo: 'Good.Example:5001/x', size })).rejects.toSatisfy(
      isSourceUnavailable,
    );
    expect(s.calls).toEqual([]);
    const data = await get(s.blocks, 0, 100, { repo: 'good.example:5000/x', size });
    expect(data.equals(tb.bytes.subarray(0, 100))).toBe(true);
    expect(s.calls.every((c) => c.includes('good.example:5000'))).toBe(true);
  });

  it('an empty list refuses every registry', async () => {
    const { dir, tb, get } = await setup();
    const s = await startSeed(dir, tb, []);
    await expect(
      get(s.blocks, 0, 100, { repo: 'good.example/x', size: String(tb.blob.size) }),
    ).rejects.toSatisfy(isSourceUnavailable);
    expect(s.calls).toEqual([]);
  });

  it('takes the size from the registry: a wrong size hint neither fails the blob nor resets its cached copy', async () => {
    const { dir, tb, get } = await setup();
    const repo = 'good.example/x';
    const first = await startSeed(dir, tb, ['good.example']);
    const want = tb.bytes.subarray(0, 50_000);
    expect((await get(first.blocks, 0, 50_000, { repo, size: String(tb.blob.size) })).equals(want)).toBe(
      true,
    );
    await first.close();

    // the same cache, a new seed process; the first node to ask lies about the size
    const second = await startSeed(dir, tb, ['good.example']);
    const data = await get(second.blocks, 0, 50_000, { repo, size: String(tb.blob.size + 4096) });
    expect(data.equals(want)).toBe(true);
    // the footer, the TOC and those blocks came from the cache: only the HEAD went to the registry
    expect(second.calls).toEqual(['HEAD good.example']);
  });
});

describe('seed idle blobs', () => {
  it('closes a blob no node asked for in p2p.seedIdleMs, so that the watermarks evict it; opens it again on request', async () => {
    const { dir, tb, get } = await setup();
    const clock = manualTimers(1_000_000);
    const s = await startSeed(dir, tb, ['good.example'], {
      timers: clock.timers,
      seedIdleMs: 60_000,
      // any filled byte is over the high watermark: an unused blob is evicted at once
      cache: { highWatermark: 1, lowWatermark: 0 },
    });
    const hint = { repo: 'good.example/x', size: String(tb.blob.size) };
    const want = tb.bytes.subarray(0, 20_000);
    expect((await get(s.blocks, 0, 20_000, hint)).equals(want)).toBe(true);
    const entry = () => s.seed.cache.list().find((b) => b.digest === tb.blob.digest);
    expect(entry()?.inUse).toBe(true);

    clock.advance(30_000);
    expect((await get(s.blocks, 0, 100, hint)).equals(tb.bytes.subarray(0, 100))).toBe(true);
    clock.advance(40_000); // 40 s since the last request
    expect(entry()?.inUse).toBe(true);

    clock.advance(60_000); // 100 s since the last request, and the sweep (every minute) runs
    await vi.waitFor(() => expect(entry()).toBeUndefined(), { timeout: 10_000 });

    // the next request opens it again, from the registry
    const before = s.calls.length;
    expect((await get(s.blocks, 0, 20_000, hint)).equals(want)).toBe(true);
    expect(s.calls.length).toBeGreaterThan(before);
    expect(entry()?.inUse).toBe(true);
  });
});

describe('seed free space', () => {
  it('does not fill a blob its cache has no room for (NO_SPACE logged), and still serves the blocks asked for', async () => {
    const { dir, tb, get } = await setup();
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
    const s = await startSeed(dir, tb, ['good.example'], {
      seedFill: true,
      freeBytes: () => Promise.resolve(1000),
      logger,
    });
    const hint = { repo: 'good.example/x', size: String(tb.blob.size) };
    expect((await get(s.blocks, 0, 20_000, hint)).equals(tb.bytes.subarray(0, 20_000))).toBe(true);
    expect(s.seed.isFilling(tb.blob.digest)).toBe(false);
    const warn = lines.map(
      (l) => JSON.parse(l) as { msg: string; err?: { code?: string; message?: string } },
    );
    expect(warn).toContainEqual(
      expect.objectContaining({
        msg: 'seed cannot hold a full copy of a blob',
        err: expect.objectContaining({ code: 'NO_SPACE', message: expect.stringMatching(/bytes free/) }),
      }),
    );
  });

  it('fills a blob that fits', async () => {
    const { dir, tb, get } = await setup();
    const s = await startSeed(dir, tb, ['good.example'], {
      seedFill: true,
      freeBytes: () => Promise.resolve(tb.blob.size),
    });
    const hint = { repo: 'good.example/x', size: String(tb.blob.size) };
    expect((await get(s.blocks, 0, 100, hint)).equals(tb.bytes.subarray(0, 100))).toBe(true);
    expect(s.seed.isFilling(tb.blob.digest)).toBe(true);
  });

  it('starts the fill with the first request for a block, not with the footer and TOC a node opens the blob with', async () => {
    const { dir, tb, get } = await setup();
    const s = await startSeed(dir, tb, ['good.example'], {
      seedFill: true,
      freeBytes: () => Promise.resolve(tb.blob.size * 2),
    });
    const hint = { repo: 'good.example/x', size: String(tb.blob.size) };
    const footer = await get(s.blocks, tb.blob.size - 96, 96, hint);
    expect(footer.equals(tb.bytes.subarray(tb.blob.size - 96))).toBe(true);
    expect(s.seed.isFilling(tb.blob.digest)).toBe(false);
    expect((await get(s.blocks, 1000, 100, hint)).equals(tb.bytes.subarray(1000, 1100))).toBe(true);
    expect(s.seed.isFilling(tb.blob.digest)).toBe(true);
  });
});
