// The fetch path of one layer under test: a ~40-block test blob served by a FakeSource, opened as a LayerCore
// over its own BlobCache (what LayerStore builds), with fast retries.
import { join } from 'node:path';
import type { Logger } from 'pino';
import { expect } from 'vitest';
import { BlobCache, type CacheIo } from '../../src/cache/blob-cache.js';
import { BlockMemoryCache } from '../../src/fetch/block-memory-cache.js';
import { FetchStats } from '../../src/fetch/fetch-stats.js';
import { FetchScheduler } from '../../src/fetch/scheduler.js';
import { LayerCore, type LayerOptions } from '../../src/layer/layer-core.js';
import { makeBlob, type TestBlob } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import type { BlockSource } from '../../src/fetch/types.js';
import { FakeSource } from './helpers.js';

/** Clean-ups of the layers and temp dirs below; each test file drains it after each test. */
export const cleanups: Array<() => Promise<void>> = [];

export async function runCleanups(): Promise<void> {
  while (cleanups.length) await cleanups.pop()!();
}

export const fast: LayerOptions = {
  fillAfterFirstRead: false,
  retryBaseMs: 1,
  retryMaxMs: 2,
  fillRetryMs: 5,
  requestTimeoutMs: 5_000,
  readTimeoutMs: 10_000,
};

export interface Setup {
  dir: string;
  tb: TestBlob;
  src: FakeSource;
  cacheDir: string;
}

export async function setup(): Promise<Setup> {
  const { dir, cleanup } = await tempDir();
  cleanups.push(cleanup);
  const tb = await makeBlob(dir);
  return { dir, tb, src: new FakeSource(tb.bytes), cacheDir: join(dir, 'cache') };
}

export async function open(
  s: Setup,
  extra: {
    options?: LayerOptions;
    io?: CacheIo;
    flushIntervalMs?: number;
    flushBytes?: number;
    mem?: BlockMemoryCache;
    scheduler?: FetchScheduler;
    sources?: BlockSource[];
    stats?: FetchStats;
    logger?: Logger;
    /** The descriptor's TOC digest annotation; null: a layer without one. Default: the blob's. */
    expectedTocDigest?: string | null;
  } = {},
) {
  const cache = await BlobCache.open({
    dir: s.cacheDir,
    digest: s.tb.blob.digest,
    size: s.tb.blob.size,
    io: extra.io,
    flushIntervalMs: extra.flushIntervalMs ?? 10,
    flushBytes: extra.flushBytes,
  });
  const core = await LayerCore.open({
    blob: s.tb.blob,
    cache,
    sources: extra.sources ?? [s.src],
    memoryCache: extra.mem ?? new BlockMemoryCache(16 * 1024 * 1024),
    scheduler: extra.scheduler,
    stats: extra.stats,
    expectedTocDigest:
      extra.expectedTocDigest === null ? undefined : (extra.expectedTocDigest ?? s.tb.tocDigest),
    logger: extra.logger,
    options: { ...fast, ...extra.options },
  });
  cleanups.push(async () => {
    await core.close();
    await cache.close().catch(() => {});
  });
  return { cache, core, toc: core.toc, tocSource: core.tocSource };
}

/** The blob range of the blocks under a file range. */
export function blockRange(
  tb: TestBlob,
  path: string,
  offset = 0,
  length?: number,
): { offset: number; length: number } {
  const st = tb.toc.stat(tb.ino(path));
  const n = Math.min(length ?? st.size, st.size - offset);
  const [a, b] = tb.toc.blocksForRange(st.dataOffset + offset, n);
  return { offset: tb.toc.blockOffset(a), length: tb.toc.blockOffset(b + 1) - tb.toc.blockOffset(a) };
}

export async function readAll(
  reader: { read: (i: number, o: number, l: number) => Promise<Buffer> },
  tb: TestBlob,
) {
  for (const [p, content] of tb.files) {
    const got = await reader.read(tb.ino(p), 0, content.length + 10);
    expect(got.equals(content), p).toBe(true);
  }
}
