import { setMaxListeners } from 'node:events';
import { DfError } from '../errors.js';
import type { SourceKind } from '../fetch/types.js';
import { silentLogger, type Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import { resolveDfbImage } from '../registry/image.js';
import type { ImageReference } from '../registry/reference.js';
import { ensureFreeSpace } from '../util/free-space.js';
import type { Layer } from './layer.js';
import type { LayerStore } from './layer-store.js';

export interface PreheatResult {
  ref: string;
  layers: number;
  /** Bytes of the image's blobs. */
  bytes: number;
  /** Stored bytes this run got, by source. */
  bySource: Record<SourceKind, number>;
  seconds: number;
  /** What the P2P fill planner did, summed over the layers (absent without a P2P tier). */
  fill?: Record<string, number>;
  /** Releases the layers (they stay in the cache). */
  release(): Promise<void>;
}

/**
 * Fetches every block of every layer of a converted image into the cache: each layer's background fill
 * (through the P2P tier when there is one: peers rarest first, the seed's share from the seed; then in order
 * with retries, the registry only if no seed is up), which checks each complete cache file against its blob
 * digest. The layers stay open (served to peers) until release().
 */
export async function preheat(
  store: LayerStore,
  client: RegistryClient,
  ref: ImageReference,
  opts: {
    signal?: AbortSignal;
    logger?: Logger;
    stallMs?: number;
    /** Free bytes of a directory (injectable for tests). */
    freeBytes?: (dir: string) => Promise<number>;
  } = {},
): Promise<PreheatResult> {
  const log = opts.logger ?? silentLogger;
  const stallMs = opts.stallMs ?? 60_000;
  const t0 = Date.now();
  const before = { ...store.stats.bytes };
  const image = await resolveDfbImage(client, ref, { signal: opts.signal });
  const opened: Layer[] = [];
  const release = async () => {
    for (const l of opened.splice(0)) await l.release();
  };
  // the fill retries forever; preheat fails when no block arrived for stallMs
  const stall = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stall.signal]) : stall.signal;
  setMaxListeners(0, signal); // every fill worker waits on it
  let present = -1;
  const watchdog = setInterval(() => {
    const now = opened.reduce((a, l) => a + l.cache.presentUnits, 0);
    if (now === present) stall.abort(DfError.timeout(`preheat ${ref}: no block arrived for ${stallMs} ms`));
    present = now;
  }, stallMs);
  try {
    for (const layer of image.layers) opened.push(await store.open(layer, ref, signal));
    // the whole image goes to the cache: say so now if it cannot fit, not when a write fails half-way
    const missing = opened.reduce((n, l) => n + Math.max(0, l.blob.size - l.cache.filledBytes), 0);
    await ensureFreeSpace(
      store.cacheDir,
      missing,
      `preheat of ${ref}`,
      'free disk space, lower cache.highWatermark or preheat fewer images',
      opts.freeBytes,
    );
    log.debug({ ref: ref.toString(), layers: opened.length }, 'preheat: filling layers');
    const stopped = new Promise<never>((_, reject) =>
      signal.addEventListener('abort', () => reject(signal.reason), { once: true }),
    );
    stopped.catch(() => undefined);
    const work = Promise.all(
      opened.map(async (l) => {
        l.startFill();
        await l.whenComplete();
      }),
    );
    await Promise.race([work, stopped]);
  } catch (err) {
    await release();
    throw DfError.from(err, `preheat ${ref}`);
  } finally {
    clearInterval(watchdog);
  }
  let fill: Record<string, number> | undefined;
  for (const l of opened) {
    const counters = l.fillCounters;
    if (!counters) continue;
    fill ??= {};
    for (const [k, n] of Object.entries(counters)) fill[k] = (fill[k] ?? 0) + n;
  }
  const bySource = { ...store.stats.bytes };
  for (const k of Object.keys(bySource) as SourceKind[]) bySource[k] -= before[k];
  return {
    ref: ref.toString(),
    layers: image.layers.length,
    bytes: image.layers.reduce((a, l) => a + l.size, 0),
    bySource,
    seconds: (Date.now() - t0) / 1000,
    fill,
    release,
  };
}
