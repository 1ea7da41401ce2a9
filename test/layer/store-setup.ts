// A LayerStore over a test DFB blob served by a FakeSource, with its cache in a temp dir.
import { CacheManager } from '../../src/cache/cache-manager.js';
import { BlockMemoryCache } from '../../src/fetch/block-memory-cache.js';
import { LayerStore } from '../../src/layer/layer-store.js';
import type { LayerSwarm } from '../../src/layer/swarm.js';
import { FakeSource } from '../fetch/helpers.js';
import { makeBlob, type TestBlob } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';

export interface StoreSetup {
  tb: TestBlob;
  src: FakeSource;
  cache: CacheManager;
  store: LayerStore;
}

/** Pushes its clean-ups (store, cache, temp dir) onto `cleanups`, to be run last first. */
export async function storeOverTestBlob(
  cleanups: Array<() => unknown>,
  opts: { swarm?: LayerSwarm } = {},
): Promise<StoreSetup> {
  const { dir, cleanup } = await tempDir('dfnode-layer-store-');
  cleanups.push(cleanup);
  const tb = await makeBlob(dir);
  const src = new FakeSource(tb.bytes);
  const cache = new CacheManager({ dir: `${dir}/cache`, highWatermark: 1 << 30, lowWatermark: 1 << 29 });
  await cache.init();
  const store = new LayerStore({
    cache,
    sources: () => [src],
    swarm: opts.swarm,
    memoryCache: new BlockMemoryCache(1 << 20),
    options: { fillAfterFirstRead: false, retryBaseMs: 1, retryMaxMs: 2 },
  });
  cleanups.push(
    () => cache.close(),
    () => store.close(),
  );
  return { tb, src, cache, store };
}
