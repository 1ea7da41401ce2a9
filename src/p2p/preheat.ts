import { setMaxListeners } from 'node:events';
import { resolveDfbImage } from '../registry/image.js';
import type { NodeRuntime, OpenedDfbLayer } from '../daemon/node-runtime.js';
import { DfError } from '../errors.js';
import type { SourceKind } from '../fetch/types.js';
import { silentLogger, type Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import type { ImageReference } from '../registry/reference.js';

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
  /** Closes the layers (they stay in the cache). */
  release(): Promise<void>;
}

/**
 * Fetches every block of every layer of a converted image into the node's cache: the fetchers' background
 * fill (through the P2P tier when there is one: peers rarest first, the seed's share from the seed; then
 * in order with retries, the registry only if no seed is up), which checks each complete cache file
 * against its blob digest. The layers stay open (served to peers) until release().
 */
export async function preheat(
  rt: NodeRuntime,
  client: RegistryClient,
  ref: ImageReference,
  opts: { signal?: AbortSignal; logger?: Logger; stallMs?: number } = {},
): Promise<PreheatResult> {
  const log = opts.logger ?? silentLogger;
  const t0 = Date.now();
  const before = { ...rt.stats.bytes };
  const image = await resolveDfbImage(client, ref, { signal: opts.signal });
  const opened: OpenedDfbLayer[] = [];
  const release = async () => {
    for (const o of opened.splice(0)) await rt.closeOpened(o);
  };
  // the fill retries forever; preheat fails when no block arrived for stallMs
  const stall = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, stall.signal]) : stall.signal;
  setMaxListeners(0, signal); // every fill worker waits on it
  let present = -1;
  const watchdog = setInterval(() => {
    const now = opened.reduce((a, o) => a + o.cache.presentUnits, 0);
    if (now === present)
      stall.abort(DfError.timeout(`preheat ${ref}: no block arrived for ${opts.stallMs ?? 60_000} ms`));
    present = now;
  }, opts.stallMs ?? 60_000);
  try {
    for (const layer of image.layers) opened.push(await rt.openDfbLayer(ref, layer, signal));
    log.debug({ ref: ref.toString(), layers: opened.length }, 'preheat: filling layers');
    const stopped = new Promise<never>((_, reject) =>
      signal.addEventListener('abort', () => reject(signal.reason), { once: true }),
    );
    stopped.catch(() => undefined);
    // the fetcher's fill: through the P2P tier first (its fill planner), then in order with retries
    const work = Promise.all(
      opened.map(async (o) => {
        o.fetcher.startBackgroundFill();
        await o.fetcher.whenComplete();
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
  for (const o of opened) {
    const v = rt.p2p?.view(o.layer.digest);
    if (!v) continue;
    fill ??= {};
    for (const [k, n] of Object.entries(v.fill)) fill[k] = (fill[k] ?? 0) + n;
  }
  const bySource = { ...rt.stats.bytes };
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
