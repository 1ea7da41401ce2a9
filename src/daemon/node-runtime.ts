import { createHash } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Toc } from '../blob/toc.js';
import { CacheManager } from '../cache/cache-manager.js';
import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import { BlockMemoryCache } from '../fetch/block-memory-cache.js';
import { FetchStats } from '../fetch/fetch-stats.js';
import { RegistryBlockSource } from '../fetch/registry-block-source.js';
import { FetchScheduler } from '../fetch/scheduler.js';
import { ReadAhead } from '../fetch/read-ahead.js';
import type { BlockSource, FileReader } from '../fetch/types.js';
import { selectBinding } from '../fuse/select-binding.js';
import { LayerFs, type InheritedDir } from '../fuse/layer-fs.js';
import { cleanupStaleMounts, lazyUnmount } from '../fuse/mounts.js';
import { probeMount } from '../fuse/mount-probe.js';
import type { FuseBinding, FuseMount } from '../fuse/types.js';
import type { Layer } from '../layer/layer.js';
import { LayerStore, layerOptionsFrom } from '../layer/layer-store.js';
import type { Logger } from '../log.js';
import { silentLogger } from '../log.js';
import type { P2pNode } from '../p2p/p2p-node.js';
import type { RegistryClient } from '../registry/client.js';
import { resolveDfbImage, type DfbLayer, type ResolvedImage } from '../registry/image.js';
import type { ImageReference } from '../registry/reference.js';
import { TokenBucket } from '../util/token-bucket.js';
import { ContainerdClient } from '../containerd/client.js';
import { ContainerdLookup } from '../containerd/containers.js';
import { ContainerMeter } from './container-meter.js';
import { inheritedDirs } from './inherited-dirs.js';
import { HostProcReader } from './proc-reader.js';
import { ReadMeter } from './read-meter.js';
import type { NodeMetrics } from './metrics.js';
import { MountRecords, type MountRecord } from './mount-records.js';
import type { ReadRecorder } from './read-recorder.js';
import { mountReadOnlyView } from './overlay.js';
import { PreheatHolds } from './control-preheat.js';

/** One mounted DFB layer: the layer (a handle from the store), its filesystem and its FUSE mount. */
export interface MountedLayer {
  layer: Layer;
  fs: LayerFs;
  mount: FuseMount;
  readAhead?: ReadAhead;
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
  /** Records what the mounts read (`dfnode run --record-reads`); their direct reads are then off. */
  recorder?: ReadRecorder;
}

/**
 * What a node holds while it serves layers: the block cache, the shared fetch scheduler and memory cache,
 * the FUSE mounts and the records that let `dfnode umount/status` find them. Used by `dfnode mount` and
 * `dfnode run`.
 */
export class NodeRuntime {
  readonly cache: CacheManager;
  /** The one way this node opens layers (mounts, the FUSE manager, preheat, the snapshotter). */
  readonly layers: LayerStore;
  readonly stats: FetchStats;
  readonly records: MountRecords;
  readonly p2p?: P2pNode;
  /** Layers of images preheated through this daemon, kept in their swarms for a while (p2p.preheatServeMs). */
  readonly preheatHolds: PreheatHolds;
  private readonly log: Logger;
  private readonly binding: FuseBinding;
  private readonly mounts = new Map<string, ImageMount>();
  private readonly config: Config;
  private readonly client: RegistryClient;
  private readonly metrics?: NodeMetrics;
  private readonly recorder?: ReadRecorder;
  private metricsTimer?: NodeJS.Timeout;
  /** Read errors, top blocked files and per-container blocked time (LayerFs read observers). */
  readonly reads: ReadMeter;
  private readonly containerd?: ContainerdClient;
  /** Every layer filesystem this runtime has mounted (images and the snapshotter's layers). */
  private readonly mounted = new Set<MountedLayer>();
  /** Direct-read bytes of each mount already published. */
  private readonly directSeen = new WeakMap<FuseMount, number>();
  private directBytes = 0;
  private readonly fillPublished = new Set<string>();

  constructor(opts: NodeRuntimeOptions) {
    this.config = opts.config;
    this.client = opts.client;
    this.log = opts.logger ?? silentLogger;
    this.metrics = opts.metrics;
    this.p2p = opts.p2p;
    this.recorder = opts.recorder;
    this.binding = opts.binding ?? selectBinding(this.config.node.fuseBinding, this.log);
    this.cache = CacheManager.fromConfig(this.config.cache, { logger: this.log });
    const m = this.metrics;
    this.stats = new FetchStats({
      fetchLatency: (kind, seconds) => m?.fetchLatency.observe({ source: kind }, seconds),
      blockedRead: (seconds) => m?.blockedSeconds.inc(seconds),
    });
    this.layers = new LayerStore({
      cache: this.cache,
      sources: (from) => this.sources(from),
      swarm: this.p2p,
      memoryCache: new BlockMemoryCache(this.config.cache.memoryBytes),
      stats: this.stats,
      // up to 6 fill runs: the P2P planner spreads them over peers (a registry-only fill uses 2)
      scheduler: new FetchScheduler({ concurrency: 12, maxFill: 6 }),
      fillBucket: new TokenBucket(this.config.fetch.fillRate),
      logger: this.log,
      options: layerOptionsFrom(this.config),
    });
    this.preheatHolds = new PreheatHolds(this.p2p ? this.config.p2p.preheatServeMs : 0, this.log);
    // a full cache takes the preheated layers back before their time is up (they are served, not needed)
    this.cache.onFull = () => this.preheatHolds.releaseOldest();
    this.records = new MountRecords(join(this.config.node.stateDir, 'mounts'));
    const address = this.config.node.containerdAddress;
    if (address) this.containerd = new ContainerdClient({ address, namespace: 'default', timeoutMs: 5000 });
    this.reads = new ReadMeter(
      m,
      this.containerd &&
        new ContainerMeter({
          lookup: new ContainerdLookup(this.containerd),
          proc: new HostProcReader(),
          sink: m?.containerSink,
          logger: this.log,
        }),
    );
  }

  get layerMountDir(): string {
    return join(this.config.node.stateDir, 'mnt');
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
    for (const [source, n] of Object.entries(this.stats.verifyFailuresBy))
      m.publishDelta(`vf:${source}`, n, (d) => m.verifyFailures.inc({ source }, d));
    for (const ml of this.mounted) this.collectDirect(ml);
    m.publishDelta('b:direct', this.directBytes, (d) => m.bytes.inc({ source: 'direct' }, d));
    const cm = this.reads.containers;
    if (cm) m.publishDelta('ub', cm.unattributedMs, (d) => m.unattributedBlocked.inc(d / 1000));
    const open = new Set<string>();
    for (const l of this.layers.list()) {
      open.add(l.digest);
      m.fillRatio.set({ blob: l.digest }, l.cache.filledBytes / Math.max(1, l.size));
    }
    for (const d of this.fillPublished) if (!open.has(d)) m.fillRatio.remove({ blob: d });
    this.fillPublished.clear();
    for (const d of open) this.fillPublished.add(d);
    m.mounts.set(this.mounted.size);
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

  /** A handle to one DFB layer of the image `ref` (see LayerStore.open); release it when done. */
  openLayer(ref: ImageReference, layer: DfbLayer, signal?: AbortSignal): Promise<Layer> {
    return this.layers.open(layer, ref, signal);
  }

  /** Mounts an open layer's filesystem at `mountpoint` (created if missing). */
  private async mountOpen(
    layer: Layer,
    mountpoint: string,
    inherited?: Map<number, InheritedDir>,
  ): Promise<MountedLayer> {
    const readAhead = this.config.fetch.readAhead ? new ReadAhead(layer.reader, layer.fetcher) : undefined;
    let reader: FileReader = readAhead ?? layer.reader;
    // recording sees every read: no direct reads in C for these mounts
    if (this.recorder) reader = this.recorder.wrap(layer.toc, reader);
    const fs = new LayerFs({
      toc: layer.toc,
      reader,
      logger: this.log,
      inheritedDirs: inherited,
      onRead: this.reads.observer(layer.digest, layer.toc),
    });
    await mkdir(mountpoint, { recursive: true });
    const mount = await this.binding
      .mount(mountpoint, fs, {
        fsname: `dfnode:${layer.digest.slice(7, 19)}`,
        logger: this.log,
        direct: this.recorder
          ? undefined
          : {
              toc: layer.toc,
              blocks: layer.cache,
              verify: this.config.cache.verifyDirectReads,
              gate: readAhead,
            },
      })
      .catch((err: unknown) => {
        readAhead?.close();
        throw err;
      });
    const ml = { layer, fs, mount, readAhead };
    this.mounted.add(ml);
    return ml;
  }

  /** Mounts an empty layer at `mountpoint` and unmounts it (fuse/mount-probe.ts). */
  probeMount(mountpoint: string): Promise<void> {
    return probeMount(this.binding, mountpoint, this.log);
  }

  /** Adds what a native mount served in C (direct reads) since the last look to directBytes. */
  private collectDirect(ml: MountedLayer): void {
    const info = (ml.mount as { info?: () => { directBytes: number } }).info;
    if (typeof info !== 'function') return;
    const n = info.call(ml.mount).directBytes;
    this.directBytes += Math.max(0, n - (this.directSeen.get(ml.mount) ?? 0));
    this.directSeen.set(ml.mount, n);
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
    const open = await this.openLayer(ref, layer, opts.signal);
    try {
      const inherited = opts.lowerTocs?.length
        ? inheritedDirs([...opts.lowerTocs, open.toc]).at(-1)
        : undefined;
      return await this.mountOpen(open, mountpoint, inherited);
    } catch (err) {
      await open.release();
      throw err;
    }
  }

  /** Unmounts a layer mounted by mountLayer and releases it. */
  async releaseLayer(mounted: MountedLayer): Promise<void> {
    if (this.mounted.delete(mounted)) this.collectDirect(mounted);
    await mounted.mount.unmount().catch((err) => this.log.warn({ err }, 'layer unmount failed'));
    mounted.readAhead?.close();
    await mounted.layer.release();
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
      const opened: Layer[] = [];
      try {
        for (const layer of image.layers) opened.push(await this.openLayer(ref, layer, signal));
      } catch (err) {
        for (const l of opened) await l.release();
        throw err;
      }
      // ...then mount them, with implied directories showing the attributes of the layers below.
      const inherited = inheritedDirs(opened.map((l) => l.toc));
      for (const [i, l] of opened.entries()) {
        try {
          im.layers.push(await this.mountOpen(l, join(this.layerMountDir, id, String(i)), inherited[i]));
        } catch (err) {
          for (const rest of opened.slice(i)) await rest.release();
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
      topBlockedFiles: this.reads.files.top(10),
      topBlockedContainers: this.reads.containers?.top(10) ?? [],
      unattributedBlockedMs: this.reads.containers?.unattributedMs ?? 0,
      updated: new Date().toISOString(),
    };
  }

  async close(): Promise<void> {
    if (this.metricsTimer) clearInterval(this.metricsTimer);
    this.reads.close();
    for (const id of [...this.mounts.keys()]) await this.unmountImage(id);
    await this.preheatHolds.close();
    await this.layers.close();
    await this.cache.close();
    this.containerd?.close();
  }
}
