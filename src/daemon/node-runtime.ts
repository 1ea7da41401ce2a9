import { createHash } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { BlobCache } from '../cache/blob-cache.js';
import { CacheManager } from '../cache/cache-manager.js';
import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import { BlobFetcher } from '../fetch/blob-fetcher.js';
import { BlockMemoryCache } from '../fetch/block-memory-cache.js';
import { FetchStats } from '../fetch/fetch-stats.js';
import { openLayer } from '../fetch/open-layer.js';
import { RegistryBlockSource } from '../fetch/registry-block-source.js';
import { FetchScheduler } from '../fetch/scheduler.js';
import { TokenBucket } from '../util/token-bucket.js';
import type { BlockSource } from '../fetch/types.js';
import { selectBinding } from '../fuse/select-binding.js';
import { LayerFs, type InheritedDir } from '../fuse/layer-fs.js';
import { cleanupStaleMounts, lazyUnmount } from '../fuse/mounts.js';
import type { FuseBinding, FuseMount } from '../fuse/types.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import type { ImageReference } from '../registry/reference.js';
import type { Toc } from '../blob/toc.js';
import { inheritedDirs } from './inherited-dirs.js';
import { resolveDfbImage, type DfbLayer, type ResolvedImage } from '../registry/image.js';
import type { NodeMetrics } from './metrics.js';
import { MountRecords, type MountRecord } from './mount-records.js';
import { mountReadOnlyView } from './overlay.js';
import type { P2pNode } from '../p2p/p2p-node.js';

/** One mounted DFB layer: cache handle, fetcher, filesystem and its FUSE mount. */
export interface MountedLayer {
  layer: DfbLayer;
  cache: BlobCache;
  fetcher: BlobFetcher;
  fs: LayerFs;
  mount: FuseMount;
}

/** A layer opened but not mounted yet. */
export interface OpenedDfbLayer {
  layer: DfbLayer;
  cache: BlobCache;
  fetcher: BlobFetcher;
  toc: Toc;
}

export interface ImageMount {
  id: string;
  target: string;
  image: ResolvedImage;
  layers: MountedLayer[];
}

export interface NodeRuntimeOptions {
  config: Config;
  client: RegistryClient;
  logger?: Logger;
  metrics?: NodeMetrics;
  binding?: FuseBinding;
  /** The P2P tier (peers and seeds before the registry; open blobs are served and announced). */
  p2p?: P2pNode;
}

/**
 * What a node holds while it serves layers: the block cache, the shared fetch scheduler and memory cache,
 * the FUSE mounts and the records that let `dfnode umount/status` find them. Used by `dfnode mount` and
 * `dfnode run`.
 */
export class NodeRuntime {
  readonly cache: CacheManager;
  readonly stats: FetchStats;
  readonly memory: BlockMemoryCache;
  // up to 6 fill runs: the P2P planner spreads them over peers (a registry-only fill uses 2)
  readonly scheduler = new FetchScheduler({ concurrency: 12, maxFill: 6 });
  readonly fillBucket: TokenBucket;
  readonly records: MountRecords;
  private readonly log: Logger;
  private readonly binding: FuseBinding;
  private readonly mounts = new Map<string, ImageMount>();
  private readonly cfg: Config;
  private readonly client: RegistryClient;
  private readonly metrics?: NodeMetrics;
  readonly p2p?: P2pNode;
  private metricsTimer?: NodeJS.Timeout;

  constructor(opts: NodeRuntimeOptions) {
    this.cfg = opts.config;
    this.client = opts.client;
    this.log = opts.logger ?? silentLogger;
    this.metrics = opts.metrics;
    this.p2p = opts.p2p;
    this.binding = opts.binding ?? selectBinding(this.cfg.node.fuseBinding, this.log);
    this.cache = new CacheManager({
      dir: this.cfg.cache.dir,
      highWatermark: this.cfg.cache.highWatermark,
      lowWatermark: this.cfg.cache.lowWatermark,
      logger: this.log,
    });
    const m = this.metrics;
    this.stats = new FetchStats({
      fetchLatency: (kind, seconds) => m?.fetchLatency.observe({ source: kind }, seconds),
      blockedRead: (seconds) => m?.blockedSeconds.inc(seconds),
    });
    this.memory = new BlockMemoryCache(this.cfg.cache.memoryBytes);
    this.fillBucket = new TokenBucket(this.cfg.fetch.fillRate);
    this.records = new MountRecords(join(this.cfg.node.stateDir, 'mounts'));
  }

  get layerMountDir(): string {
    return join(this.cfg.node.stateDir, 'mnt');
  }

  /** Takes the cache lock, cleans mounts left by a killed dfnode and stale records. */
  async start(): Promise<void> {
    await mkdir(this.layerMountDir, { recursive: true });
    const stale = await cleanupStaleMounts(this.layerMountDir, { logger: this.log });
    for (const s of stale.filter((x) => x.unmounted))
      this.log.info({ mountpoint: s.mountpoint }, 'cleaned up a stale mount');
    await this.records.cleanupDead(async (rec) => {
      await lazyUnmount(rec.target).catch(() => undefined);
      await rm(join(this.layerMountDir, rec.id), { recursive: true, force: true }).catch(() => undefined);
    });
    await this.cache.init();
    if (this.metrics) {
      this.metricsTimer = setInterval(() => this.publishMetrics(), 1000).unref();
      this.metrics.onScrape(() => this.publishMetrics());
    }
  }

  private lastPublished: Record<string, number> = {};

  /** Turns the fetch counters into Prometheus counters (deltas) and gauges. */
  publishMetrics(): void {
    const m = this.metrics;
    if (!m) return;
    for (const kind of ['memory', 'cache', 'peer', 'seed', 'registry'] as const) {
      const key = `b:${kind}`;
      const d = this.stats.bytes[kind] - (this.lastPublished[key] ?? 0);
      if (d > 0) m.bytes.inc({ source: kind }, d);
      this.lastPublished[key] = this.stats.bytes[kind];
      const rk = `r:${kind}`;
      const dr = this.stats.requests[kind] - (this.lastPublished[rk] ?? 0);
      if (dr > 0) m.fetches.inc({ source: kind }, dr);
      this.lastPublished[rk] = this.stats.requests[kind];
    }
    const dv = this.stats.verifyFailures - (this.lastPublished.verify ?? 0);
    if (dv > 0) m.verifyFailures.inc({ source: 'any' }, dv);
    this.lastPublished.verify = this.stats.verifyFailures;
    let layers = 0;
    for (const im of this.mounts.values())
      for (const l of im.layers) {
        layers++;
        m.fillRatio.set({ blob: l.layer.digest }, l.cache.filledBytes / Math.max(1, l.layer.size));
      }
    m.mounts.set(layers);
    if (this.p2p) {
      m.publishP2p(this.p2p.counters);
      m.publishBlockServer(this.p2p.server.counters);
    }
    m.cacheBytes.set(this.cache.list().reduce((a, b) => a + b.filledBytes, 0));
  }

  private sources(ref: ImageReference): BlockSource[] {
    const registry = new RegistryBlockSource(this.client, ref);
    if (!this.p2p) return [registry];
    // peers, then the blob's seed, then the registry; all under the host's download limit
    return this.p2p.chain(ref.repoString, registry);
  }

  /** Opens one DFB layer: cache handle (reference-counted) plus footer and TOC, and a fetcher. */
  async openDfbLayer(ref: ImageReference, layer: DfbLayer, signal?: AbortSignal): Promise<OpenedDfbLayer> {
    const blob = { digest: layer.digest, size: layer.size };
    const cache = await this.cache.open(blob, signal);
    try {
      const o = await openLayer({
        blob,
        cache,
        sources: this.sources(ref),
        memoryCache: this.memory,
        stats: this.stats,
        scheduler: this.scheduler,
        fillBucket: this.fillBucket,
        logger: this.log,
        expectedTocDigest: layer.tocDigest,
        fillPlanner: this.p2p?.fillPlanner(layer.digest),
        signal,
        options: {
          readTimeoutMs: this.cfg.fetch.readTimeoutMs,
          requestTimeoutMs: this.cfg.fetch.requestTimeoutMs,
          retries: this.cfg.fetch.retries,
          maxRunBytes: this.cfg.fetch.maxRunBytes,
          fillAfterFirstRead: this.cfg.fetch.backgroundFill,
          verifyCachedReads: this.cfg.cache.verifyCachedReads,
        },
      });
      this.p2p?.register(blob, o.toc, cache);
      return { layer, cache, fetcher: o.fetcher, toc: o.toc };
    } catch (err) {
      await this.cache.release(cache).catch(() => undefined);
      throw err;
    }
  }

  async closeOpened(o: OpenedDfbLayer): Promise<void> {
    await this.p2p?.unregister(o.layer.digest);
    await o.fetcher.close().catch(() => undefined);
    await this.cache.release(o.cache).catch(() => undefined);
  }

  /** Mounts an opened layer's filesystem at `mountpoint` (created if missing). */
  async mountOpened(
    o: OpenedDfbLayer,
    mountpoint: string,
    inherited?: Map<number, InheritedDir>,
  ): Promise<MountedLayer> {
    const fs = new LayerFs({ toc: o.toc, reader: o.fetcher, logger: this.log, inheritedDirs: inherited });
    await mkdir(mountpoint, { recursive: true });
    const mount = await this.binding.mount(mountpoint, fs, {
      fsname: `dfnode:${o.layer.digest.slice(7, 19)}`,
      logger: this.log,
      direct: { toc: o.toc, blocks: o.cache },
    });
    return { layer: o.layer, cache: o.cache, fetcher: o.fetcher, fs, mount };
  }

  /**
   * Mounts one layer of an image at `mountpoint` (the snapshotter's remote layers). `lowerTocs` are the
   * TOCs of the layers below it, bottom first, when known: implied directories then show their attributes.
   */
  async mountLayer(
    ref: ImageReference,
    layer: DfbLayer,
    mountpoint: string,
    opts: { lowerTocs?: Toc[]; signal?: AbortSignal } = {},
  ): Promise<MountedLayer> {
    const o = await this.openDfbLayer(ref, layer, opts.signal);
    try {
      const inherited = opts.lowerTocs?.length ? inheritedDirs([...opts.lowerTocs, o.toc]).at(-1) : undefined;
      return await this.mountOpened(o, mountpoint, inherited);
    } catch (err) {
      await this.closeOpened(o);
      throw err;
    }
  }

  /** Unmounts a layer mounted by mountLayer and releases its cache handle. */
  async releaseLayer(l: MountedLayer): Promise<void> {
    await l.mount.unmount().catch((err) => this.log.warn({ err }, 'layer unmount failed'));
    await this.p2p?.unregister(l.layer.digest);
    await l.fetcher.close().catch(() => undefined);
    await this.cache.release(l.cache).catch(() => undefined);
  }

  /** Mounts every layer of a converted image with FUSE and their merged read-only view at `target`. */
  async mountImage(ref: ImageReference, targetDir: string, signal?: AbortSignal): Promise<ImageMount> {
    const target = resolve(targetDir);
    const existing = await this.records.findByTarget(target);
    if (existing)
      throw new DfError('ALREADY_EXISTS', `${target} is already a dfnode mount (pid ${existing.pid})`);
    const image = await resolveDfbImage(this.client, ref, { signal });
    const id = createHash('sha256')
      .update(`${target}\n${process.pid}\n${Date.now()}`)
      .digest('hex')
      .slice(0, 16);
    const im: ImageMount = { id, target, image, layers: [] };
    this.mounts.set(id, im);
    try {
      // Open every layer first (footer + TOC, from the cache or two range reads each)...
      const opened: OpenedDfbLayer[] = [];
      try {
        for (const layer of image.layers) opened.push(await this.openDfbLayer(ref, layer, signal));
      } catch (err) {
        for (const o of opened) await this.closeOpened(o);
        throw err;
      }
      // ...then mount them, with implied directories showing the attributes of the layers below.
      const inherited = inheritedDirs(opened.map((o) => o.toc));
      for (const [i, o] of opened.entries()) {
        try {
          im.layers.push(await this.mountOpened(o, join(this.layerMountDir, id, String(i)), inherited[i]));
        } catch (err) {
          for (const rest of opened.slice(i)) await this.closeOpened(rest);
          throw err;
        }
      }
      await mkdir(target, { recursive: true });
      await mountReadOnlyView(
        [...im.layers].reverse().map((l) => l.mount.mountpoint),
        target,
      );
      await this.records.write({
        id,
        pid: process.pid,
        target,
        ref: ref.toString(),
        manifest: image.manifestDigest,
        layers: image.layers.map((l) => l.digest),
        started: new Date().toISOString(),
      });
      return im;
    } catch (err) {
      await this.unmountImage(id).catch(() => undefined);
      throw err;
    }
  }

  /** Unmounts the merged view and every layer of a mount made by this process. */
  async unmountImage(id: string): Promise<void> {
    const im = this.mounts.get(id);
    if (!im) return;
    this.mounts.delete(id);
    await lazyUnmount(im.target).catch((err) => this.log.warn({ err, target: im.target }, 'unmount failed'));
    for (const l of [...im.layers].reverse()) await this.releaseLayer(l);
    await rm(join(this.layerMountDir, id), { recursive: true, force: true }).catch(() => undefined);
    await this.records.remove(id);
  }

  imageMounts(): ImageMount[] {
    return [...this.mounts.values()];
  }

  /** A snapshot for the mount record (read by `dfnode status`). */
  statusSnapshot(): MountRecord['stats'] {
    return {
      bytes: { ...this.stats.bytes },
      requests: { ...this.stats.requests },
      verifyFailures: this.stats.verifyFailures,
      blockedMs: this.stats.blockedMs,
      readErrors: this.stats.readErrors,
      updated: new Date().toISOString(),
    };
  }

  async close(): Promise<void> {
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    for (const id of [...this.mounts.keys()]) await this.unmountImage(id);
    await this.cache.close();
  }
}
