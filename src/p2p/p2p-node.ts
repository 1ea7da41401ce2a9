import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { Toc } from '../blob/toc.js';
import type { BlobCache } from '../cache/blob-cache.js';
import type { Config } from '../config.js';
import { realTimers, type Timers } from '../util/timers.js';
import type { BlobRef, BlockSource } from '../fetch/types.js';
import { silentLogger, type Logger } from '../log.js';
import { DfError } from '../errors.js';
import { resolveClusterToken } from './auth.js';
import { HostBandwidth, RateLimitedSource } from './bandwidth.js';
import { BlockServer, type BlobProvider, type ServedBlob } from './block-server.js';
import { HttpBlockClient } from './http-block-client.js';
import { Isolation } from './isolation.js';
import { PeerBlockSource } from './peer-block-source.js';
import { PeerView, type Holder } from './peer-view.js';
import { isolationReason, type P2pCounters } from './p2p-counters.js';
import { CountedRegistrySource, RegistryFallback } from './registry-fallback.js';
import { rankSeeds } from './rendezvous.js';
import { SeedBlockSource } from './seed-block-source.js';
import { loadTls, type TlsMaterial } from './tls.js';
import { TRACKER_REFUSALS, type Tracker } from './tracker-service.js';
import type { LookupAnswer } from './tracker-messages.js';
import { trackerOf } from './tracker-http.js';
import type { FillPlanner } from '../fetch/background-fill.js';
import type { LayerSwarm, SwarmMembership } from '../layer/swarm.js';
import { p2pFill, type RunFetcher } from './fill-planner.js';
import { OriginSwitch } from './hand-back.js';
import { seedFileTable, type SeedAccess } from './seed-file-table.js';
import { UnitLayout, type Units } from './unit-layout.js';
import { ANNOUNCE_DELAY_MS, LOOKUP_GAP_MS, LOOKUP_MAX_PEERS } from './node-cadence.js';

export interface P2pNodeOptions {
  config: Config;
  logger?: Logger;
  /** Shared with the registry source; by default made from p2p.uploadRate/downloadRate. */
  bandwidth?: HostBandwidth;
  timers?: Timers;
}

/**
 * A node's part in the P2P tier: serves the verified blocks of its open blobs to cluster peers, announces
 * them to each blob's tracker (full bitmap, then deltas, leave at the end), asks the tracker for holders and
 * provides the peer and seed sources of the fetch chain.
 */
export class P2pNode implements BlobProvider, LayerSwarm {
  readonly id = randomBytes(8).toString('hex');
  readonly bandwidth: HostBandwidth;
  readonly isolation: Isolation;
  readonly seedIsolation: Isolation;
  readonly counters: P2pCounters = {
    peersIsolated: 0,
    peersIsolatedBy: {},
    peersSlow: 0,
    seedsDown: 0,
    trackerAnswers: 0,
    trackerEmpty: 0,
    trackerErrors: 0,
    registryFetches: {},
  };
  /** Why ranges went on to the registry (noted by the peer and seed sources). */
  readonly fallback = new RegistryFallback();
  readonly server: BlockServer;
  readonly peers: PeerBlockSource;
  private readonly http: HttpBlockClient;
  private readonly views = new Map<string, PeerView>();
  private readonly trackers = new Map<string, Tracker>();
  private readonly failedPeers = new Set<string>();
  private readonly warnedUnauthorized = new Set<string>();
  private readonly token: string;
  /** p2p.tls: mutual TLS on the block server, the block client and the tracker clients. */
  private readonly tls: TlsMaterial | undefined;
  private readonly settings: Config['p2p'];
  private readonly log: Logger;
  private readonly timers: Timers;
  /** Whether planned seed requests offer to take a run back from the registry (hand-back.ts). */
  private readonly origin: OriginSwitch;
  private address = '';
  private timer: NodeJS.Timeout | undefined;
  private ticking: Promise<void> | undefined;

  constructor(opts: P2pNodeOptions) {
    this.settings = opts.config.p2p;
    this.log = opts.logger ?? silentLogger;
    this.timers = opts.timers ?? realTimers;
    this.token = resolveClusterToken(this.settings);
    this.origin = new OriginSwitch(
      () => this.timers.now(),
      (err) =>
        this.log.warn(
          { err },
          'p2p: a run the seed handed back failed at the registry; the seed sends all for 5 min',
        ),
    );
    this.tls = loadTls(this.settings.tls);
    this.bandwidth =
      opts.bandwidth ?? new HostBandwidth(this.settings.uploadRate, this.settings.downloadRate, this.timers);
    this.isolation = new Isolation({
      baseMs: this.settings.isolationBaseMs,
      maxMs: this.settings.isolationMaxMs,
      timers: this.timers,
      onIsolate: (peer, ms, reason) => {
        this.counters.peersIsolated++;
        const k = isolationReason(reason);
        this.counters.peersIsolatedBy[k] = (this.counters.peersIsolatedBy[k] ?? 0) + 1;
        this.log.warn({ peer, ms, reason }, 'peer isolated');
      },
    });
    this.seedIsolation = new Isolation({
      baseMs: Math.min(this.settings.isolationBaseMs, 2000),
      maxMs: 30_000,
      timers: this.timers,
      // found down by a block request or by its tracker, whichever came first: one count per exclusion
      onIsolate: (seed, ms, reason) => {
        this.counters.seedsDown++;
        this.log.warn({ seed, ms, reason }, 'seed unreachable; the next one takes over');
      },
    });
    this.http = new HttpBlockClient(this.token, this.bandwidth.download, this.id, this.tls);
    this.server = new BlockServer({
      provider: this,
      clusterToken: this.token,
      upload: this.bandwidth.upload,
      logger: this.log,
      tls: this.tls,
      uploadSlots: this.settings.uploadSlots,
      maxConnections: this.settings.maxConnections,
      maxConnectionsPerHost: this.settings.maxConnectionsPerHost,
    });
    this.peers = new PeerBlockSource({
      view: (d) => this.views.get(d),
      refresh: (v) => void this.lookup(v).catch((err) => this.log.debug({ err }, 'p2p: lookup failed')),
      http: this.http,
      isolation: this.isolation,
      reportFailure: (id) => this.failedPeers.add(id),
      onSlow: (peer) => {
        this.counters.peersSlow++;
        this.log.debug(
          { peer },
          'peer slow: a fill run timed out while its bytes were arriving; sent elsewhere',
        );
      },
      zone: this.settings.zone,
      timeoutMs: this.settings.peerTimeoutMs,
      timers: this.timers,
      fallback: this.fallback,
    });
  }

  /** Starts the block server and the announce loop. Returns the address peers reach this node at. */
  async start(): Promise<string> {
    const bound = await this.server.listen(this.settings.listen);
    if (this.settings.advertise) this.address = this.settings.advertise;
    else {
      const port = bound.slice(bound.lastIndexOf(':') + 1);
      const host = bound.slice(0, bound.lastIndexOf(':'));
      this.address = `${host === '0.0.0.0' || host === '[::]' ? hostname() : host}:${port}`;
    }
    this.timer = setInterval(
      () => void this.tick().catch((err) => this.log.warn({ err }, 'p2p: announce round failed')),
      this.settings.announceIntervalMs,
    );
    this.timer.unref();
    return this.address;
  }

  get advertised(): string {
    return this.address;
  }

  /**
   * The whole fetch chain after the cache: peers, the blob's seed, then `registry` under the host's download
   * limit, each registry request counted with the reason the P2P tier did not serve it.
   */
  chain(repo: string, registry: BlockSource): BlockSource[] {
    const counted = new CountedRegistrySource(registry, this.fallback, (reason) => {
      this.counters.registryFetches[reason] = (this.counters.registryFetches[reason] ?? 0) + 1;
    });
    const seed = this.seedSource(repo, this.settings.seeds, this.origin);
    return [this.peers, seed, new RateLimitedSource(counted, this.bandwidth.download)];
  }

  /** The piece table of a raw file from the first seed that answers, and that seed (seed-file-table.ts). */
  fileTable(
    key: string,
    query: Record<string, string>,
    maxBytes: number,
    signal: AbortSignal,
    origin?: Readonly<Record<string, string>>,
  ): Promise<{ seed: string; table: Buffer }> {
    return seedFileTable(this.seedAccess, key, query, maxBytes, signal, origin);
  }

  /** What asks the seeds themselves (piece tables, manifests: seed-manifest.ts): their client and isolation. */
  get seedAccess(): SeedAccess {
    return {
      seeds: this.settings.seeds,
      isolation: this.seedIsolation,
      http: this.http,
      timers: this.timers,
    };
  }

  /** The seed tier as a source of one blob held by `seed` (a raw file's table seed). */
  seedFor(seed: string): BlockSource {
    return this.seedSource('', [seed]);
  }

  private seedSource(
    repo: string,
    seeds: readonly string[] = this.settings.seeds,
    origin?: OriginSwitch,
  ): SeedBlockSource {
    return new SeedBlockSource({
      seeds,
      repo,
      ...(origin && { origin }),
      http: this.http,
      isolation: this.seedIsolation,
      timeoutMs: this.settings.seedTimeoutMs,
      timers: this.timers,
      fallback: this.fallback,
      onUnauthorized: (seed, message) => {
        if (this.warnedUnauthorized.has(seed)) return;
        this.warnedUnauthorized.add(seed);
        this.log.error(
          { seed, err: message },
          'seed refused this node (cluster token or TLS): check p2p.clusterToken and p2p.tls; using the registry instead',
        );
      },
    });
  }

  /**
   * A layer is about to load its TOC: connects to the blob's tracker meanwhile, so that its first announce
   * (and lookup, which the fill waits for) takes one round trip, not three, over a queueing downlink.
   */
  prepare(blob: BlobRef): void {
    this.tracker(blob.digest)?.connect();
  }

  /**
   * A layer joins the swarm once its TOC is verified: its verified units are served to peers and announced
   * to its tracker, and its background fill goes through the P2P tier first (see fillPlanner). The layer
   * store joins once per open blob and leaves before the blob's cache closes.
   */
  join(layer: { blob: BlobRef; toc: Toc; cache: BlobCache }): SwarmMembership {
    return this.joinUnits({
      blob: layer.blob,
      layout: new UnitLayout(layer.toc, layer.blob.size),
      cache: layer.cache,
    });
  }

  /**
   * Joins the swarm of any blob whose units `layout` counts (a DFB layer's blocks, a raw file's pieces):
   * the same serving, announces and lookups. The caller leaves before `cache` closes.
   */
  joinUnits(layer: { blob: BlobRef; layout: Units; cache: BlobCache }): SwarmMembership {
    const { blob } = layer;
    if (this.views.has(blob.digest))
      throw DfError.internal(`p2p: ${blob.digest} joined twice (layers come from one LayerStore)`);
    const view = new PeerView(blob, layer.layout, layer.cache);
    this.views.set(blob.digest, view);
    // new units are announced within ANNOUNCE_DELAY_MS (not only at the interval): peers waiting for them go on
    const soon = () => {
      if (view.soon || this.views.get(blob.digest) !== view) return;
      view.soon = this.timers.setTimeout(() => {
        view.soon = undefined;
        if (this.views.get(blob.digest) === view)
          void this.announce(view).catch((err) => this.log.debug({ err }, 'p2p: announce failed'));
      }, ANNOUNCE_DELAY_MS);
    };
    view.unlisten = layer.cache.addUnitListener({ present: soon, reset: soon });
    // the first announce asks for holders too (lookup() below: on its own where the tracker predates that)
    view.lookupDue = !layer.cache.isComplete;
    const announced = this.announce(view).catch((err) =>
      this.log.debug({ err, digest: blob.digest }, 'p2p: first announce failed'),
    );
    void announced.then(() => this.lookup(view)).catch(() => undefined);
    let left: Promise<void> | undefined;
    return {
      planner: this.fillPlanner(view),
      fillCounters: view.fill,
      leave: () => (left ??= this.leaveSwarm(view)),
      announced,
    };
  }

  /**
   * Background fill of a blob through the P2P tier (rarest first from peers, the seed's share from the
   * seed: see p2pFill).
   */
  private fillPlanner(view: PeerView): FillPlanner {
    return (fetcher, signal) => this.planFill(view, fetcher, signal);
  }

  /**
   * The planner's pass over a joined blob with another fetcher (the registry mirror's piece runs): returns
   * when nothing is left to plan or the seed tier is down; the caller fetches what is left.
   */
  async fillUnits(digest: string, fetcher: RunFetcher, signal: AbortSignal): Promise<void> {
    const view = this.views.get(digest);
    if (view) await this.planFill(view, fetcher, signal);
  }

  private async planFill(view: PeerView, fetcher: RunFetcher, signal: AbortSignal): Promise<void> {
    if (this.views.get(view.blob.digest) !== view || view.cache.isComplete) return;
    const soon = (h: Holder) => !this.isolation.isolated(h.id);
    const failed = await p2pFill(view, fetcher, {
      signal,
      refresh: (x) => this.lookup(x),
      // a holder busy or slow for a moment (full) keeps its units off the seed's upload
      soon,
      usable: (h) => soon(h) && !this.peers.isFull(h.id),
      origin: this.origin,
    });
    if (failed) this.log.debug({ digest: view.blob.digest, failed }, 'p2p fill: some runs failed');
  }

  /** The layer closes: stop serving it and leave its swarm. */
  private async leaveSwarm(view: PeerView): Promise<void> {
    const digest = view.blob.digest;
    if (this.views.get(digest) !== view) return;
    this.views.delete(digest);
    this.fallback.forget(digest);
    view.unlisten?.();
    if (view.soon !== undefined) this.timers.clearTimeout(view.soon);
    await this.announce(view, true).catch(() => undefined);
  }

  // ------------------------------------------------------------------ BlobProvider (serving peers)

  async get(digest: string): Promise<ServedBlob | undefined> {
    const v = this.views.get(digest);
    if (!v) return undefined;
    return {
      size: v.blob.size,
      read: async (offset, length, signal) => {
        const r = v.layout.unitsFor(offset, length);
        if (!r) return undefined;
        for (let u = r[0]; u <= r[1]; u++) if (!v.cache.has(u)) return undefined;
        return v.cache.read(offset, length, signal);
      },
    };
  }

  // ------------------------------------------------------------------ tracker

  /** The tracker of a blob: its first seed that is not isolated. */
  private tracker(digest: string): Tracker | undefined {
    for (const seed of rankSeeds(digest, this.settings.seeds)) {
      if (this.seedIsolation.isolated(seed)) continue;
      let c = this.trackers.get(seed);
      if (!c) {
        c = trackerOf(seed, this.token, this.settings.trackerTimeoutMs, this.tls, this.log);
        this.trackers.set(seed, c);
      }
      return c;
    }
    return undefined;
  }

  /**
   * A tracker call failed. A seed whose tracker refuses connections is down (isolated: its blocks and its
   * tracker go to the next seed); a call that merely timed out is a busy seed, not a dead one, and one the
   * tracker refused (full, a message or peer id it does not take) came from a seed that is up.
   */
  private trackerFailed(c: Tracker, err: unknown): void {
    this.counters.trackerErrors++;
    const e = DfError.from(err);
    if (e.code === 'TIMEOUT' || TRACKER_REFUSALS.includes(e.code)) return;
    for (const [seed, x] of this.trackers)
      if (x === c) this.seedIsolation.fail(seed, 'tracker: ' + e.message);
  }

  /**
   * Announces what changed (or leaves); one announce of a blob at a time, in order. `forLookup`: sent for
   * the lookup it carries (none if an announce before it answered that lookup).
   */
  private announce(v: PeerView, leave = false, forLookup = false): Promise<void> {
    const next = v.announcing.then(() => this.announceNow(v, leave, forLookup));
    v.announcing = next.catch(() => undefined);
    return next;
  }

  private async announceNow(v: PeerView, leave: boolean, forLookup = false): Promise<void> {
    const c = this.tracker(v.blob.digest);
    if (!c || (forLookup && !v.lookupDue)) return;
    if (v.announcedTo !== c.address) v.announced = undefined;
    const d = v.delta();
    // a lookup that is due goes with it (one call); a tracker that ignored one gets its own (lookup())
    const look = v.lookupDue && !leave && !v.cache.isComplete && c.foldsLookups !== false;
    if (!leave && !look && !d.full && d.added.length === 0 && this.failedPeers.size === 0 && v.announced) {
      // nothing new: a heartbeat every fifth interval keeps the tracker from forgetting this node
      if (++v.beats % 5 !== 0) return;
    }
    const failed = [...this.failedPeers];
    this.failedPeers.clear();
    try {
      const r = await c.announce({
        ...(look && { lookup_want: v.missing(), lookup_max_peers: LOOKUP_MAX_PEERS }),
        blob: v.blob.digest,
        units: v.layout.units,
        peer_id: this.id,
        address: this.address,
        zone: this.settings.zone,
        load: this.server.load,
        full: d.full,
        bitmap: d.full ? d.bitmap : new Uint8Array(0),
        added: d.added,
        leave,
        failed_peers: failed,
      });
      v.announcedTo = c.address;
      v.announced = r.need_full ? undefined : d.bitmap;
      if (look) c.foldsLookups = !!r.lookup;
      if (look && r.lookup) {
        v.lookupDue = false;
        this.looked(v, r.lookup);
      }
      if (r.need_full && !leave) await this.announceNow(v, false);
    } catch (err) {
      this.trackerFailed(c, err);
      v.announced = undefined;
    }
  }

  /**
   * Asks the blob's tracker for holders of what this node misses (at most every LOOKUP_GAP_MS per blob):
   * with an announce of what it has (one call for both, AnnounceRequest.lookup_max_peers), or on its own
   * where the tracker does not answer lookups in announces.
   */
  private lookup(v: PeerView): Promise<void> {
    if (v.looking) return v.looking;
    if (this.timers.now() - v.lastLookup < LOOKUP_GAP_MS || v.cache.isComplete) return Promise.resolve();
    v.lastLookup = this.timers.now();
    v.looking = (async () => {
      const c = this.tracker(v.blob.digest);
      if (!c) return;
      if (c.foldsLookups !== false) {
        v.lookupDue = true;
        // an announce of new units due within ANNOUNCE_DELAY_MS goes now, with it
        if (v.soon !== undefined) this.timers.clearTimeout(v.soon);
        v.soon = undefined;
        await this.announce(v, false, true).catch(() => undefined);
        // answered with the announce; else on its own: a tracker that predates it, or one that refused the
        // announce (full: it may still name holders); not a seed the failure took for down (isolated)
        if (!v.lookupDue || this.tracker(v.blob.digest) !== c) return;
      }
      v.lookupDue = false;
      try {
        const r = await c.lookup({
          blob: v.blob.digest,
          peer_id: this.id,
          zone: this.settings.zone,
          // every unit this node misses, wherever it is in the blob (a list of the first few thousand
          // made holders of a large layer's far end invisible)
          want_bitmap: v.missing(),
          max_peers: LOOKUP_MAX_PEERS,
        });
        this.looked(v, r);
      } catch (err) {
        this.trackerFailed(c, err);
      }
    })().finally(() => (v.looking = undefined));
    return v.looking;
  }

  private looked(v: PeerView, r: LookupAnswer): void {
    v.lastLookup = this.timers.now();
    this.counters.trackerAnswers++;
    if (!r.holders?.length) this.counters.trackerEmpty++;
    v.setHolders(r);
  }

  private async tick(): Promise<void> {
    if (this.ticking) return;
    this.ticking = (async () => {
      for (const v of [...this.views.values()]) {
        // a lookup that is due goes with the announce (the announce after it then has nothing new)
        if (!v.cache.isComplete) await this.lookup(v);
        await this.announce(v);
      }
    })().finally(() => (this.ticking = undefined));
    await this.ticking;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.ticking?.catch(() => undefined);
    for (const v of [...this.views.values()]) await this.announce(v, true).catch(() => undefined);
    this.views.clear();
    await this.server.close();
    for (const c of this.trackers.values()) c.close();
    await this.http.close();
  }
}
