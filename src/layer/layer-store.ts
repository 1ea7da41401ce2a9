import type { Toc } from '../blob/toc.js';
import type { CacheManager } from '../cache/cache-manager.js';
import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import type { BlobCache } from '../cache/blob-cache.js';
import { FetchStats } from '../fetch/fetch-stats.js';
import type { BlockSource } from '../fetch/types.js';
import { silentLogger, type Logger } from '../log.js';
import type { DfbLayer } from '../registry/image.js';
import type { ImageReference } from '../registry/reference.js';
import { bound } from '../util/timers.js';
import { LayerCore, type LayerOptions, type LayerShared } from './layer-core.js';
import { loadToc, type LoadedToc } from './load-toc.js';
import { Layer } from './layer.js';

export interface LayerStoreOptions extends LayerShared {
  cache: CacheManager;
  /** The source chain for a blob of an image from `from` (peers, seed, registry; or just the registry). */
  sources: (from: ImageReference) => BlockSource[];
}

/** A TOC read in flight (LayerStore.readToc), with the TOC digest it is checked against. */
interface TocRead {
  tocDigest?: string;
  loading: Promise<LoadedToc>;
}

interface Entry {
  refs: number;
  opening: Promise<LayerCore>;
  /** Set once the open has finished. */
  core?: LayerCore;
  closing?: Promise<void>;
}

/** LayerOptions from the configuration (`fetch.*`, `cache.verifyCachedReads`). */
export function layerOptionsFrom(cfg: Config): LayerOptions {
  return {
    readTimeoutMs: cfg.fetch.readTimeoutMs,
    requestTimeoutMs: cfg.fetch.requestTimeoutMs,
    retries: cfg.fetch.retries,
    maxRunBytes: cfg.fetch.maxRunBytes,
    fillAfterFirstRead: cfg.fetch.backgroundFill,
    prefetchOnOpen: cfg.fetch.prefetch,
    verifyCachedReads: cfg.cache.verifyCachedReads,
  };
}

/**
 * The one way to get a layer (stargz's `Resolver`): `open` returns a reference-counted handle to the layer
 * of a blob digest, opening it (cache, TOC, fetcher, reader, fill, P2P membership) on first use and sharing
 * it with every later holder; the last `release` leaves the swarm, stops fill and fetches, then releases the
 * cache. Used by the node runtime, the seed, the FUSE manager, preheat and the snapshotter's layers.
 */
export class LayerStore {
  readonly stats: FetchStats;
  private readonly entries = new Map<string, Entry>();
  /** readToc calls in flight, by digest: shared by concurrent callers and awaited by an open of the layer. */
  private readonly tocReads = new Map<string, TocRead>();
  private readonly logger: Logger;
  private readonly closer = new AbortController();

  constructor(private readonly opts: LayerStoreOptions) {
    this.stats = opts.stats ?? new FetchStats();
    this.logger = opts.logger ?? silentLogger;
  }

  /**
   * A handle to `layer`, whose blocks come from the image `from` when it is not open yet. The open is shared
   * by every caller of the same digest; `signal` stops this caller's wait, not the open others wait for.
   */
  async open(layer: DfbLayer, from: ImageReference, signal?: AbortSignal): Promise<Layer> {
    for (;;) {
      if (this.closer.signal.aborted) throw new DfError('FAILED_PRECONDITION', 'layer store is closed');
      const existing = this.entries.get(layer.digest);
      if (existing?.closing) {
        await existing.closing.catch(() => undefined);
        continue;
      }
      const entry = existing ?? this.start(layer, from);
      entry.refs++;
      try {
        const core = await bound(entry.opening, { signal, what: `open layer ${layer.digest}` });
        return new Layer(core, () => this.release(layer.digest, entry));
      } catch (err) {
        await this.release(layer.digest, entry);
        throw err;
      }
    }
  }

  /**
   * The verified TOC of `layer` alone (the layers below a mounted one, for implied directories): from the
   * open layer when there is one, else through loadToc over its cache (which keeps the TOC for later opens)
   * without building a layer, so nothing joins the swarm or starts fetching for a layer nobody reads.
   * Concurrent calls for one blob share one read, and an open of the layer waits for it and takes the TOC
   * from the cache (a pull warms every layer's TOC while containerd prepares them one by one).
   */
  async readToc(layer: DfbLayer, from: ImageReference, signal?: AbortSignal): Promise<Toc> {
    const open = this.entries.get(layer.digest);
    if (open && !open.closing) {
      const core =
        open.core ??
        (await bound(open.opening, { signal, what: `open layer ${layer.digest}` }).catch(() => undefined));
      if (core) return core.toc;
    }
    let reading = this.tocReads.get(layer.digest);
    if (!reading || reading.tocDigest !== layer.tocDigest) reading = this.startTocRead(layer, from);
    return (await bound(reading.loading, { signal, what: `TOC of ${layer.digest}` })).toc;
  }

  /**
   * readToc of each layer, in the background (a pull or a first Prepare has just resolved an image): failures
   * are only logged, since the open of the layer reads the TOC again and reports its own error.
   */
  warmTocs(layers: readonly DfbLayer[], from: ImageReference): void {
    for (const l of layers)
      this.readToc(l, from).catch((err: unknown) =>
        this.logger.debug({ err, layer: l.digest }, 'TOC warm-up failed'),
      );
  }

  private startTocRead(layer: DfbLayer, from: ImageReference): TocRead {
    const started = { tocDigest: layer.tocDigest, loading: this.loadTocOnly(layer, from) };
    this.tocReads.set(layer.digest, started);
    started.loading
      .finally(() => {
        if (this.tocReads.get(layer.digest) === started) this.tocReads.delete(layer.digest);
      })
      .catch(() => undefined);
    return started;
  }

  private async loadTocOnly(layer: DfbLayer, from: ImageReference): Promise<LoadedToc> {
    const blob = { digest: layer.digest, size: layer.size };
    const signal = this.closer.signal;
    const cacheIsNew = !this.opts.cache.holds(layer.digest);
    const opening = this.opts.cache.open(blob, signal);
    try {
      return await loadToc({
        blob,
        cache: opening,
        cacheIsNew,
        sources: this.opts.sources(from),
        expectedTocDigest: layer.tocDigest,
        tocOffsetHint: layer.tocOffset,
        requestTimeoutMs: this.opts.options?.requestTimeoutMs,
        timers: this.opts.timers,
        logger: this.logger,
        signal,
      });
    } finally {
      await opening.then((c) => this.opts.cache.release(c)).catch(() => undefined);
    }
  }

  /** The cache directory the layers' blobs live in. */
  get cacheDir(): string {
    return this.opts.cache.dir;
  }

  /** Open layers: digest, cache and number of holders (for metrics and status). */
  list(): Array<{ digest: string; size: number; cache: BlobCache; refs: number }> {
    const out: Array<{ digest: string; size: number; cache: BlobCache; refs: number }> = [];
    for (const [digest, e] of this.entries) {
      const core = e.core;
      if (core && !e.closing) out.push({ digest, size: core.blob.size, cache: core.cache, refs: e.refs });
    }
    return out;
  }

  /** Closes every layer, whoever holds it (shutdown). */
  async close(): Promise<void> {
    this.closer.abort(DfError.aborted('layer store closed'));
    const all = [...this.entries.entries()];
    await Promise.all(
      all.map(async ([digest, e]) => {
        e.refs = 0;
        await this.teardown(digest, e);
      }),
    );
  }

  private start(layer: DfbLayer, from: ImageReference): Entry {
    const entry: Entry = { refs: 0, opening: this.build(layer, from) };
    this.entries.set(layer.digest, entry);
    entry.opening.then(
      (core) => (entry.core = core),
      () => {
        if (this.entries.get(layer.digest) === entry) this.entries.delete(layer.digest);
      },
    );
    return entry;
  }

  private async build(layer: DfbLayer, from: ImageReference): Promise<LayerCore> {
    const blob = { digest: layer.digest, size: layer.size };
    const signal = this.closer.signal;
    // A TOC read already on its way (a pull's warm-up) is waited for and taken as it is, instead of reading
    // and decoding the TOC a second time; a blob the cache holds nothing of gets one now, so that its TOC
    // travels while the cache is created. If the read failed, the open reads the TOC itself and reports its
    // own error.
    let reading = this.tocReads.get(layer.digest);
    if (!reading && !this.opts.cache.holds(layer.digest)) reading = this.startTocRead(layer, from);
    const cache = await this.opts.cache.open(blob, signal);
    try {
      const loaded =
        reading && reading.tocDigest === layer.tocDigest
          ? await reading.loading.catch(() => undefined)
          : undefined;
      return await LayerCore.open({
        ...this.opts,
        stats: this.stats,
        blob,
        cache,
        sources: this.opts.sources(from),
        expectedTocDigest: layer.tocDigest,
        tocOffsetHint: layer.tocOffset,
        loaded,
        signal,
      });
    } catch (err) {
      await this.opts.cache.release(cache).catch(() => undefined);
      throw err;
    }
  }

  private release(digest: string, entry: Entry): Promise<void> {
    if (entry.closing) return entry.closing;
    if (--entry.refs > 0) return Promise.resolve();
    return this.teardown(digest, entry);
  }

  private teardown(digest: string, entry: Entry): Promise<void> {
    entry.closing ??= (async () => {
      const core = await entry.opening.catch(() => undefined);
      if (!core) return;
      await core.close();
      await this.opts.cache.release(core.cache).catch((err) => {
        this.logger.warn({ err, digest }, 'cache release failed');
      });
    })().finally(() => {
      if (this.entries.get(digest) === entry) this.entries.delete(digest);
    });
    return entry.closing;
  }
}
