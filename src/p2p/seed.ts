import { CacheManager } from '../cache/cache-manager.js';
import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import { BlockMemoryCache } from '../fetch/block-memory-cache.js';
import { FetchStats } from '../fetch/fetch-stats.js';
import { RegistryBlockSource } from '../fetch/registry-block-source.js';
import { FetchScheduler } from '../fetch/scheduler.js';
import { Priority, sourceUnavailable } from '../fetch/types.js';
import type { Layer } from '../layer/layer.js';
import { LayerStore, layerOptionsFrom } from '../layer/layer-store.js';
import { silentLogger, type Logger } from '../log.js';
import { freeBytes } from '../util/free-space.js';
import { realTimers, type Timers } from '../util/timers.js';
import type { RegistryClient } from '../registry/client.js';
import { resolveDfbImage } from '../registry/image.js';
import { RequestPipeline } from '../registry/request-pipeline.js';
import { parseReference, type ImageReference } from '../registry/reference.js';
import { resolveClusterToken } from './auth.js';
import { HostBandwidth, RateLimitedSource } from './bandwidth.js';
import { BlockServer } from './block-server.js';
import { SEED_MAX_CONNECTIONS } from './listener-limits.js';
import type { BlobHint, BlobProvider, ServedBlob } from './block-server.js';
import type { SeedFileProvider } from './served-blob.js';
export type { SeedFileProvider } from './served-blob.js';
import type { PreheatAnswer } from './preheat-request.js';
import { listenPair } from './rendezvous.js';
import { loadTls, type TlsMaterial } from './tls.js';
import { serveTracker } from './tracker-service.js';
import { TrackerState } from './tracker-state.js';
import { claimUnits, deliveryReports, trackedFile } from './seed-claims.js';
import type { HandBackOptions } from './hand-back.js';
import { HttpBlockClient } from './http-block-client.js';
import { seedHandBack, type SeedHandBack } from './seed-copy.js';
import { roomForBlob } from './seed-room.js';
import { allowedRepo, registryAllowed } from './seed-registries.js';
import type { SeedManifestProvider } from './manifest-request.js';
import { UnitLayout } from './unit-layout.js';

// the largest registry request of a seed (its fill and nodes' misses); the fill starts no new run while
// NODE_FETCHES_BEFORE_FILL_YIELDS registry fetches for nodes run (a node alone has 4 runs out); planned
// piece requests of raw files (mirror, `dfnode get`) sent at once, 429 beyond (uploadSlots)
const SEED_RUN_BYTES = 1024 * 1024;
const NODE_FETCHES_BEFORE_FILL_YIELDS = 4;
const FILE_UPLOAD_SLOTS = 8;

interface SeedBlob {
  layer: Layer;
  layout: UnitLayout;
  /** When a node last asked for it (timers.now()). */
  lastUsed: number;
  /** Reads in progress: a blob is not closed under them. */
  active: number;
  /** Preheats waiting for it to be complete: not closed as idle meanwhile. */
  pinned: number;
  /** The full-copy fill starts with the first request for a block (see open()). */
  fillOnBlock: boolean;
}

/** Images preheating at once (POST /preheat); more are refused until some finish. */
const MAX_PREHEATING = 64;

export interface SeedOptions {
  /** Raw files (`dfnode get`), made from the seed's cache and download limit; none without it. */
  files?: (deps: {
    cache: CacheManager;
    download: HostBandwidth['download'];
    logger: Logger;
    now: () => number;
  }) => SeedFileProvider;
  config: Config;
  client: RegistryClient;
  /** Manifests relayed for the nodes' mirrors (`GET /manifests/...`); none without it (404). */
  manifests?: SeedManifestProvider;
  logger?: Logger;
  /** Clock and timers of the idle sweep (tests). */
  timers?: Timers;
  /** Hand-back thresholds (tests; hand-back.ts defaults). */
  handBack?: Partial<Omit<HandBackOptions, 'now'>>;
  /** Free bytes of the file system of a directory (default: statfs; tests). */
  freeBytes?: (dir: string) => Promise<number>;
}

/**
 * `dfnode seed`: full copies of the blobs nodes ask it for, fetched from the registry block by block on
 * first request (one registry fetch per block however many nodes ask: the fetcher coalesces), then in the
 * background; serves blocks to nodes and runs the tracker of its blobs.
 */
export class Seed implements BlobProvider {
  readonly cache: CacheManager;
  readonly stats = new FetchStats();
  readonly tracker: TrackerState;
  readonly bandwidth: HostBandwidth;
  private readonly server: BlockServer;
  private readonly blobs = new Map<string, Promise<SeedBlob>>();
  /** Images being preheated (POST /preheat), by reference. */
  private readonly preheating = new Map<string, Promise<void>>();
  /** Blobs open and ready (for the tracker's view of what this seed holds). */
  private readonly opened = new Map<string, SeedBlob>();
  private readonly layers: LayerStore;
  /** Raw files (`dfnode get`): whole from an allowed origin, served by piece with their piece table. */
  readonly files: SeedFileProvider | undefined;
  private readonly log: Logger;
  private readonly token: string;
  /** p2p.tls: mutual TLS on the block server and the tracker. */
  private readonly tls: TlsMaterial | undefined;
  private trackerServer: { address: string; stop(): Promise<void> } | undefined;
  private readonly timers: Timers;
  private readonly freeBytes: (dir: string) => Promise<number>;
  private sweepTimer: unknown;
  /** The registry connections its fill and nodes' planned runs are pipelined on (p2p.seedRegistryPipeline). */
  private readonly pipeline: RequestPipeline | undefined;
  /** Planned runs handed back to nodes while the seed's registry link is full (hand-back.ts). */
  private readonly handBack: SeedHandBack;
  /** Aborts registry requests of opens at close(). */
  private readonly closer = new AbortController();

  constructor(private readonly opts: SeedOptions) {
    const cfg = opts.config;
    this.log = opts.logger ?? silentLogger;
    this.timers = opts.timers ?? realTimers;
    this.freeBytes = opts.freeBytes ?? freeBytes;
    this.token = resolveClusterToken(cfg.p2p);
    if (!this.token) throw new DfError('CONFIG', 'a seed needs p2p.clusterToken (or p2p.clusterTokenFile)');
    this.tls = loadTls(cfg.p2p.tls);
    this.cache = CacheManager.fromConfig(cfg.cache, { logger: this.log });
    this.bandwidth = new HostBandwidth(cfg.p2p.uploadRate, cfg.p2p.downloadRate);
    const depth = cfg.p2p.seedRegistryPipeline;
    this.pipeline = depth > 0 ? new RequestPipeline({ depth }) : undefined;
    this.tracker = new TrackerState({
      peerTtlMs: cfg.p2p.peerTtlMs,
      announceIntervalMs: cfg.p2p.announceIntervalMs,
      seedBits: (digest) => this.opened.get(digest)?.layer.cache.snapshot() ?? this.files?.bits?.(digest),
    });
    const hb = (this.handBack = seedHandBack({
      enabled: cfg.p2p.handBack,
      tracker: this.tracker,
      layoutOf: (d) => this.opened.get(d)?.layout,
      http: new HttpBlockClient(this.token, this.bandwidth.download, '', this.tls),
      timers: this.timers,
      options: opts.handBack,
    }));
    this.layers = new LayerStore({
      cache: this.cache,
      ...hb.layers,
      sources: (from) =>
        hb.chain(
          new RateLimitedSource(
            new RegistryBlockSource(opts.client, from, this.pipeline),
            this.bandwidth.download,
          ),
        ),
      memoryCache: new BlockMemoryCache(8 * 1024 * 1024),
      stats: this.stats,
      // Registry fetches nodes wait for come first: while NODE_FETCHES_BEFORE_FILL_YIELDS of them run, the
      // fill starts no new run (runs in flight go on). The seed's link then carries what nodes forward as it
      // arrives (cut-through), not blocks fetched ahead that nobody asked for yet, which a node on a link as
      // fast as the seed's could take only after the seed's last block (bench/p2p N = 1). Below that, the
      // fill goes on in the gaps between nodes' requests: in order, its next run is usually what a node alone
      // asks for next, and the node's request joins it.
      scheduler: new FetchScheduler({
        concurrency: 16,
        fillHoldOffMs: 0,
        fillWarmupMs: 0,
        fillYieldAt: NODE_FETCHES_BEFORE_FILL_YIELDS,
      }),
      logger: this.log,
      options: {
        ...layerOptionsFrom(cfg),
        // 1 MiB runs, three at a time: the link stays busy and each run is ready to serve early
        maxRunBytes: Math.min(cfg.fetch.maxRunBytes, SEED_RUN_BYTES),
        fillAfterFirstRead: false,
        // no container reads from a seed: its fill fetches everything, in order
        prefetchOnOpen: false,
        fillConcurrency: 3,
        verifyCachedReads: true,
      },
    });
    const files = opts.files?.({
      cache: this.cache,
      download: this.bandwidth.download,
      logger: this.log,
      now: () => this.timers.now(),
    });
    this.files = files;
    this.server = new BlockServer({
      fileTable: files && ((q, signal, origin) => files.table(q, signal, origin)),
      manifests: opts.manifests?.answer,
      provider: this,
      clusterToken: this.token,
      upload: this.bandwidth.upload,
      requestTimeoutMs: Math.max(cfg.fetch.requestTimeoutMs, cfg.p2p.seedTimeoutMs) * 2,
      logger: this.log,
      tls: this.tls,
      preheat: (images) => this.preheat(images),
      tracker: this.tracker,
      maxConnections: cfg.p2p.maxConnections ?? SEED_MAX_CONNECTIONS,
      maxConnectionsPerHost: cfg.p2p.maxConnectionsPerHost,
    });
  }

  /** Listens on p2p.listen (blocks) and the next port (tracker). Returns both addresses. */
  async start(): Promise<{ blocks: string; tracker: string }> {
    await this.cache.init();
    await this.files?.init();
    await this.opts.manifests?.init();
    this.scheduleSweep();
    const r = await listenPair(this.opts.config.p2p.listen, this.server, (a) =>
      serveTracker(this.tracker, a, this.token, this.tls, { limit: this.server.connectionLimit }),
    );
    return { blocks: r.blocks, tracker: (this.trackerServer = r.tracker).address };
  }

  get counters() {
    return this.server.counters;
  }

  /** For the metrics endpoint (NodeMetrics.publishSeed): every registry request of a seed is a seed miss. */
  get metricsCounters(): {
    registryRequests: number;
    bytes: Record<string, number>;
    tracker: { announces: number; lookups: number; carriedLookups: number };
    handedBack: number;
  } {
    const { announces, lookups, carriedLookups } = this.tracker.counters;
    return {
      registryRequests: this.stats.requests.registry,
      bytes: { ...this.stats.bytes },
      tracker: { announces, lookups, carriedLookups },
      handedBack: this.handBack.handBacks.handedBack,
    };
  }

  async get(digest: string, hint: BlobHint, signal: AbortSignal): Promise<ServedBlob | undefined> {
    const file = this.files?.served(digest);
    if (file) return trackedFile(this.tracker, digest, file, FILE_UPLOAD_SLOTS);
    let ref: ImageReference | undefined;
    if (!this.blobs.has(digest)) {
      if (!hint.repo) return undefined;
      ref = allowedRepo(this.opts.config.p2p.seedRegistries, digest, hint.repo, this.log);
      if (!ref)
        throw new DfError(
          'FORBIDDEN',
          `this seed does not fetch blobs of ${hint.repo.slice(0, 200)}: its registry is not in p2p.seedRegistries`,
        );
    }
    // not bound to this request: other nodes wait for the same open
    void signal;
    const b = await this.openBlob(digest, ref, hint.size);
    b.lastUsed = this.timers.now();
    return {
      size: b.layout.size,
      read: async (offset, length, sig, h) => {
        const r = b.layout.unitsFor(offset, length);
        if (!r) return undefined;
        // closed as idle between get() and this read: the node asks again (and the seed opens it again)
        if (b.layer.released) throw sourceUnavailable(`${digest} was closed as idle; ask again`);
        if (b.fillOnBlock && r[0] < b.layout.units - 1) {
          b.fillOnBlock = false;
          this.startFill(b.layer, digest);
        }
        b.active++;
        b.lastUsed = this.timers.now();
        const done = () => {
          b.active--;
          b.lastUsed = this.timers.now();
        };
        let parts: Promise<Buffer>[];
        try {
          parts = this.readUnits(b, digest, offset, r, length, sig, h);
        } catch (err) {
          done();
          throw err;
        }
        // busy (not idle) until the last part is sent or failed
        void Promise.allSettled(parts).then(done);
        return parts;
      },
      ...deliveryReports(this.tracker, digest, b.layout),
    };
  }

  /**
   * The range as one promise per unit, in order (the first and last cut to the range): each settles when
   * its unit is verified, so the block server forwards a block as it arrives from the registry
   * (cut-through) instead of after the whole run.
   */
  private readUnits(
    b: SeedBlob,
    digest: string,
    offset: number,
    r: [number, number],
    length: number,
    sig: AbortSignal,
    h: BlobHint | undefined,
  ): Promise<Buffer>[] {
    const units: number[] = [];
    for (let u = r[0]; u <= r[1]; u++) units.push(u);
    const atSeed = (u: number) => b.layer.cache.has(u) || b.layer.fetcher.inFlight(u);
    claimUnits(this.tracker, digest, h, units, `${digest} ${offset}+${length}`, false, (peer, us) =>
      this.handBack.handBacks.take(digest, peer, us, atSeed),
    );
    const parts = b.layer.fetcher.unitParts(units, Priority.Blocked, sig, { bulk: h?.defer === true });
    const from = offset - b.layout.offset(r[0]);
    const to = offset + length - b.layout.offset(r[1]);
    const last = parts.length - 1;
    return parts.map((p, i) => p.then((x) => x.subarray(i === 0 ? from : 0, i === last ? to : x.length)));
  }

  /** The open blob, or opens it (from `ref`; every caller of a digest shares one open). */
  private openBlob(
    digest: string,
    ref: ImageReference | undefined,
    size: number | undefined,
  ): Promise<SeedBlob> {
    let p = this.blobs.get(digest);
    if (!p) {
      if (!ref) return Promise.reject(DfError.notFound(`blob ${digest} is not open`));
      p = this.open(digest, ref, size);
      this.blobs.set(digest, p);
      p.catch(() => this.blobs.delete(digest));
    }
    return p;
  }

  /**
   * Starts preheating images (`POST /preheat`, e.g. a registry's push webhook): each image's DFB layers
   * are opened and filled completely, and stay open until complete. Returns what was accepted and what
   * was refused (a bad reference, a registry not in p2p.seedRegistries, too many preheats at once).
   */
  preheat(images: string[]): PreheatAnswer {
    const answer: PreheatAnswer = { accepted: [], refused: [] };
    for (const image of images) {
      let ref: ImageReference;
      try {
        ref = parseReference(image);
      } catch (err) {
        answer.refused.push({ image, reason: DfError.from(err).message });
        continue;
      }
      if (!this.registryAllowed(ref)) {
        answer.refused.push({ image, reason: `registry ${ref.registry} is not in p2p.seedRegistries` });
        continue;
      }
      const key = ref.toString();
      if (!this.preheating.has(key)) {
        if (this.preheating.size >= MAX_PREHEATING) {
          answer.refused.push({ image, reason: `${MAX_PREHEATING} images are preheating; retry later` });
          continue;
        }
        const run = this.preheatImage(ref).then(
          () => this.log.info({ image: key }, 'preheat complete'),
          (err: unknown) => this.log.warn({ err, image: key }, 'preheat failed'),
        );
        this.preheating.set(key, run);
        void run.finally(() => this.preheating.delete(key));
      }
      answer.accepted.push(key);
    }
    return answer;
  }

  /** Images preheating now (status, tests). */
  get preheats(): string[] {
    return [...this.preheating.keys()];
  }

  private async preheatImage(ref: ImageReference): Promise<void> {
    const img = await resolveDfbImage(this.opts.client, ref, { signal: this.closer.signal });
    await Promise.all(
      img.layers.map(async (l) => {
        const sb = await this.openBlob(l.digest, ref, l.size);
        sb.pinned++;
        try {
          if (!sb.layer.filling) {
            if (!(await this.roomFor(l.digest, l.size - sb.layer.cache.filledBytes)))
              throw new DfError('NO_SPACE', `seed cache has no room for ${l.digest}`);
            sb.layer.startFill();
          }
          await sb.layer.whenComplete();
        } finally {
          sb.pinned--;
          sb.lastUsed = this.timers.now();
        }
      }),
    );
  }

  /** Whether the cache has room for the rest of the blob (seed-room.ts). */
  private roomFor(digest: string, missing: number): Promise<boolean> {
    return roomForBlob(this.opts.config.cache.dir, digest, missing, this.freeBytes, this.timers, this.log);
  }

  /** Whether the seed is filling a full copy of the blob (open, with its background fill started). */
  isFilling(digest: string): boolean {
    return this.opened.get(digest)?.layer.filling ?? false;
  }

  /** The idle sweep, every min(p2p.seedIdleMs, 1 min). */
  private scheduleSweep(): void {
    const idleMs = this.opts.config.p2p.seedIdleMs;
    this.sweepTimer = this.timers.setTimeout(
      () => {
        this.sweepTimer = undefined;
        if (this.closer.signal.aborted) return;
        this.releaseIdle();
        this.scheduleSweep();
      },
      Math.min(idleMs, 60_000),
    );
  }

  /**
   * Closes the blobs no node asked for in p2p.seedIdleMs: the layer store releases their cache, which the
   * cache manager may then evict under its watermarks (an open blob is never evicted). The next request
   * opens a blob again, from what its cache still holds.
   */
  releaseIdle(): void {
    const now = this.timers.now();
    void this.files?.releaseIdle(this.opts.config.p2p.seedIdleMs);
    for (const [digest, sb] of this.opened) {
      if (sb.active > 0 || sb.pinned > 0 || now - sb.lastUsed < this.opts.config.p2p.seedIdleMs) continue;
      this.opened.delete(digest);
      this.blobs.delete(digest);
      this.log.info({ digest }, 'seed closes an idle blob');
      sb.layer
        .release()
        .catch((err: unknown) => this.log.warn({ err, digest }, 'closing an idle blob failed'));
    }
  }

  /** Whether p2p.seedRegistries lets this seed fetch from the registry of `ref`. */
  private registryAllowed(ref: ImageReference): boolean {
    return registryAllowed(this.opts.config.p2p.seedRegistries, ref);
  }

  private async open(digest: string, ref: ImageReference, hinted: number | undefined): Promise<SeedBlob> {
    const size = await this.opts.client.headBlob(ref, digest, { signal: this.closer.signal });
    if (size === undefined) throw DfError.notFound(`blob ${digest} not found in ${ref.repoString}`);
    if (hinted !== undefined && hinted !== size)
      this.log.warn(
        { digest, repo: ref.repoString, hinted, size },
        'a node asked for a blob with a size the registry does not confirm; using the registry size',
      );
    const layer = await this.layers.open({ digest, size, tocDigest: undefined, diffId: undefined }, ref);
    // Not yet: a node opens a blob with its footer and TOC, then announces itself and opens the connections
    // its fill runs go over. Filling now would queue the registry's bytes on the seed's downlink in front of
    // all of that (bench/p2p: 100–250 ms per round trip, and connections opened behind the queue stayed
    // slow for the whole blob); its first block request starts it.
    const fill =
      this.opts.config.p2p.seedFill && (await this.roomFor(digest, size - layer.cache.filledBytes));
    this.log.info({ digest, repo: ref.repoString }, 'seeding blob');
    const sb: SeedBlob = {
      layer,
      layout: new UnitLayout(layer.toc, size),
      lastUsed: this.timers.now(),
      active: 0,
      pinned: 0,
      fillOnBlock: fill,
    };
    this.opened.set(digest, sb);
    return sb;
  }

  private startFill(layer: Layer, digest: string): void {
    if (layer.filling) return;
    layer.startFill();
    layer.whenComplete().then(
      () => this.log.info({ digest }, 'seed holds the complete blob'),
      () => undefined,
    );
  }

  async close(): Promise<void> {
    this.closer.abort(DfError.aborted('seed closed'));
    if (this.sweepTimer !== undefined) this.timers.clearTimeout(this.sweepTimer);
    await this.trackerServer?.stop();
    await this.server.close();
    await this.files?.close();
    await this.opts.manifests?.close();
    this.opened.clear();
    this.blobs.clear();
    await this.layers.close();
    await this.handBack.close();
    await this.pipeline?.close();
    await this.cache.close();
  }
}
