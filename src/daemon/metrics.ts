import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { listenTcp } from '../util/listen.js';
import { DfError } from '../errors.js';
import type { P2pCounters } from '../p2p/p2p-counters.js';
import type { ContainerLabels } from './container-meter.js';
import type { RegistryFetchReason } from '../p2p/registry-fallback.js';
import type { MirrorCounters } from '../mirror/mirror-server.js';

/** How often the event-loop lag is sampled (ms). */
const EVENT_LOOP_SAMPLE_MS = 100;

/** What a seed exposes to its metrics (the Seed class). */
export interface SeedCounters {
  /** Range requests the seed sent to the registry (blocks it did not hold yet). */
  registryRequests: number;
  /** Stored bytes by source (registry, cache, memory). */
  bytes: Record<string, number>;
  /** Calls its tracker answered (either transport). */
  tracker: { announces: number; lookups: number; carriedLookups: number };
  /** Planned runs handed back to nodes while its registry link was full (src/p2p/hand-back.ts). */
  handedBack?: number;
}

/** The node's Prometheus metrics. Components report through these methods; nothing here is per-block logging. */
export class NodeMetrics {
  readonly registry = new Registry();
  readonly bytes = new Counter({
    name: 'dfnode_bytes_total',
    help:
      'Stored block bytes served to reads and fill, by source (memory, cache, peer, seed, registry; direct: file ' +
      'bytes answered in C from the cache file, without JS)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly fetches = new Counter({
    name: 'dfnode_fetch_requests_total',
    help: 'Range requests sent to remote sources, by source',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly fetchLatency = new Histogram({
    name: 'dfnode_block_fetch_seconds',
    help: 'Latency of remote block fetches (one range request), by source',
    labelNames: ['source'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly blockedSeconds = new Counter({
    name: 'dfnode_read_blocked_seconds_total',
    help: 'Time container reads spent waiting for block fetches',
    registers: [this.registry],
  });
  readonly containerBlocked = new Counter({
    name: 'dfnode_container_read_blocked_seconds_total',
    help:
      'Time the reads of a container waited on the network (reads served from memory or the cache count 0), by ' +
      'containerd container id, image, namespace (the pod namespace under Kubernetes, else the containerd ' +
      'namespace), pod and container_name (Kubernetes); series dropped when the container ends',
    labelNames: ['container', 'image', 'namespace', 'pod', 'container_name'] as const,
    registers: [this.registry],
  });
  readonly containerBlockedReads = new Counter({
    name: 'dfnode_container_blocked_reads_total',
    help: 'Reads of a container that waited on the network (labels as dfnode_container_read_blocked_seconds_total)',
    labelNames: ['container', 'image', 'namespace', 'pod', 'container_name'] as const,
    registers: [this.registry],
  });
  readonly unattributedBlocked = new Counter({
    name: 'dfnode_read_blocked_unattributed_seconds_total',
    help:
      'Time reads waited on the network that no container series took (a host process, an unknown cgroup, ' +
      'containerd unreachable, the fuse-native binding that does not know the pid, or a bound reached)',
    registers: [this.registry],
  });
  readonly verifyFailures = new Counter({
    name: 'dfnode_verification_failures_total',
    help: 'Blocks that failed SHA-256 verification, by source',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly readErrors = new Counter({
    name: 'dfnode_read_errors_total',
    help: 'File reads answered with an error (EIO, ENOSPC, ...), by errno',
    labelNames: ['errno'] as const,
    registers: [this.registry],
  });
  readonly fillRatio = new Gauge({
    name: 'dfnode_cache_fill_ratio',
    help: "Fraction of each open blob (dfnode mount images and the snapshotter's layers) present in the local cache",
    labelNames: ['blob'] as const,
    registers: [this.registry],
  });
  readonly cacheBytes = new Gauge({
    name: 'dfnode_cache_bytes',
    help: 'Bytes held in the local block cache',
    registers: [this.registry],
  });
  readonly mounts = new Gauge({
    name: 'dfnode_mounts',
    help: "Layer filesystems currently mounted (dfnode mount images and the snapshotter's layers)",
    registers: [this.registry],
  });
  readonly registryFetches = new Counter({
    name: 'dfnode_registry_fetches_total',
    help:
      'Range requests sent to the registry by a P2P node or seed, by why the P2P tier did not serve them ' +
      '(seed_down, seed_timeout, seed_busy, seed_handed_back, verification, retry; seed_miss on a seed)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly peersIsolated = new Counter({
    name: 'dfnode_peers_isolated_total',
    help: 'Peers excluded for a while after a failure, by reason (timeout, bad_block, error)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly peersSlow = new Counter({
    name: 'dfnode_peers_slow_total',
    help: 'Fill runs from a peer that timed out while it was still sending (a saturated uplink): sent to another source, the peer not isolated (the third in a row isolates it)',
    registers: [this.registry],
  });
  readonly seedsDown = new Counter({
    name: 'dfnode_seeds_down_total',
    help: 'Times a seed was found down (a block or tracker request refused, reset or failed, or 3 block timeouts in a row) and skipped for a while, so that the next seed in rendezvous order (or the registry) took over',
    registers: [this.registry],
  });
  readonly trackerAnswers = new Counter({
    name: 'dfnode_tracker_answers_total',
    help: 'Tracker lookups, by result (holders: named at least one holder, empty: none, error: failed)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly trackerRequests = new Counter({
    name: 'dfnode_tracker_requests_total',
    help: "Calls a seed's tracker answered, by method (announce; lookup: on its own; lookup_in_announce: a lookup an announce carried, not a call of its own), over HTTP and gRPC: its load from the nodes of its swarms",
    labelNames: ['method'] as const,
    registers: [this.registry],
  });
  readonly peerRequests = new Counter({
    name: 'dfnode_peer_requests_total',
    help: 'Block requests this host answered for cluster members, by result (served; refused: no or wrong token; deferred: a seed told the node to take units from the node it is already sending them to; handed_back: a seed with a full registry link told the node to fetch the run from the registry itself; busy: a fill run refused with all upload slots taken; connection_refused: a connection closed on arrival, p2p.maxConnections or p2p.maxConnectionsPerHost being open)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly mirrorRequests = new Counter({
    name: 'dfnode_mirror_requests_total',
    help: 'Requests the registry mirror answered, by kind (base, manifest, blob; invalid, refused; connection_refused: a connection closed on arrival, 1024 being open)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly mirrorBytes = new Counter({
    name: 'dfnode_mirror_bytes_total',
    help: 'Bytes the registry mirror sent to engines, by kind (manifest, blob)',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly mirrorEvents = new Counter({
    name: 'dfnode_mirror_events_total',
    help:
      'Registry mirror events: manifest_hit (answered from memory), stale_manifest (answered from memory while ' +
      'the registry was unreachable), digest_mismatch (the registry sent bytes that do not match the digest), ' +
      'cluster_fallback (a blob streamed from the registry because the cluster could not answer it), ' +
      'access_check and access_denied (blob HEADs with the engine credentials before a cluster answer), ' +
      'outage_answer (a blob answered while the registry was unreachable, on a remembered access), ' +
      'seed_manifest (a manifest the cluster seed answered, fetched by it with the same credentials), ' +
      'anonymous_token and anonymous_refused (anonymous tokens fetched for engines that sent no credentials; ' +
      'scopes they did not open)',
    labelNames: ['event'] as const,
    registers: [this.registry],
  });
  readonly seedManifests = new Counter({
    name: 'dfnode_seed_manifests_total',
    help:
      "A seed's manifest answers to nodes' mirrors by where they came from: registry (fetched now), memory " +
      '(within mirror.manifestTtlMs), stale (kept, the registry unreachable), refused (the registry refused ' +
      'the credentials), joined (a request that shared a fetch on its way)',
    labelNames: ['from'] as const,
    registers: [this.registry],
  });
  readonly mirrorBlobs = new Counter({
    name: 'dfnode_mirror_blobs_total',
    help: 'Blob answers of the registry mirror by source: cache (held complete), cluster (pieces), registry (streamed)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly mirrorPieceBytes = new Counter({
    name: 'dfnode_mirror_piece_bytes_total',
    help: 'Bytes of blob pieces the registry mirror moved into the cache, by source (peer, seed, registry)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  private readonly scrapeHooks: (() => void)[] = [];
  private readonly last = new Map<string, number>();

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    // the event-loop lag histogram samples every 100 ms, not every 10 (prom-client's default): a timer that
    // woke an idle daemon 100 times a second was ~3 CPU-s per GiB moved on a 20 Mbit/s link (bench/dataplane)
    if (opts.defaultMetrics !== false)
      collectDefaultMetrics({
        register: this.registry,
        prefix: 'dfnode_process_',
        eventLoopMonitoringPrecision: EVENT_LOOP_SAMPLE_MS,
      });
  }

  /** The sink of a ContainerMeter: per-container counters, removed when the container ends. */
  readonly containerSink = {
    blocked: (labels: ContainerLabels, seconds: number): void => {
      this.containerBlocked.inc(labels, seconds);
      this.containerBlockedReads.inc(labels);
    },
    remove: (labels: ContainerLabels): void => {
      this.containerBlocked.remove(labels);
      this.containerBlockedReads.remove(labels);
    },
  };

  /** Adds what a monotonic number grew by since the last call with the same key (public form of delta). */
  publishDelta(key: string, value: number, inc: (d: number) => void): void {
    this.delta(key, value, inc);
  }

  /** `fn` runs before each scrape (brings the counters that components keep as plain numbers up to date). */
  onScrape(fn: () => void): void {
    this.scrapeHooks.push(fn);
  }

  async text(): Promise<string> {
    for (const fn of this.scrapeHooks) fn();
    return this.registry.metrics();
  }

  /** Adds what `value` grew by since the last call with the same key (components keep monotonic numbers). */
  private delta(key: string, value: number, inc: (d: number) => void): void {
    const d = value - (this.last.get(key) ?? 0);
    if (d > 0) inc(d);
    this.last.set(key, Math.max(value, this.last.get(key) ?? 0));
  }

  /** The counters of a node's P2P tier (P2pNode.counters), as deltas. */
  publishP2p(c: P2pCounters): void {
    for (const [reason, n] of Object.entries(c.registryFetches))
      this.delta(`rf:${reason}`, n ?? 0, (d) => this.registryFetches.inc({ reason }, d));
    for (const [reason, n] of Object.entries(c.peersIsolatedBy))
      this.delta(`pi:${reason}`, n, (d) => this.peersIsolated.inc({ reason }, d));
    this.delta('ps', c.peersSlow, (d) => this.peersSlow.inc(d));
    this.delta('sd', c.seedsDown, (d) => this.seedsDown.inc(d));
    this.delta('ta:holders', c.trackerAnswers - c.trackerEmpty, (d) =>
      this.trackerAnswers.inc({ result: 'holders' }, d),
    );
    this.delta('ta:empty', c.trackerEmpty, (d) => this.trackerAnswers.inc({ result: 'empty' }, d));
    this.delta('ta:error', c.trackerErrors, (d) => this.trackerAnswers.inc({ result: 'error' }, d));
  }

  /** The registry mirror's counters, published as deltas before each scrape. */
  publishMirror(mirror: {
    counters: MirrorCounters;
    pieceBytes: Partial<Record<string, number>>;
    upstream?: { anonymous?: { counters: { fetched: number; refused: number } } };
  }): void {
    this.onScrape(() => {
      const c = mirror.counters;
      const anon = mirror.upstream?.anonymous?.counters;
      for (const [source, n] of Object.entries(c.blobSources))
        this.publishDelta(`mbs:${source}`, n, (d) => this.mirrorBlobs.inc({ source }, d));
      for (const [source, n] of Object.entries(mirror.pieceBytes))
        this.publishDelta(`mpb:${source}`, n ?? 0, (d) => this.mirrorPieceBytes.inc({ source }, d));
      const events: [string, number][] = [
        ['cluster_fallback', c.clusterFallbacks],
        ['access_check', c.accessChecks],
        ['access_denied', c.accessDenied],
        ['outage_answer', c.outageAnswers],
        ['seed_manifest', c.seedManifests],
        ['anonymous_token', anon?.fetched ?? 0],
        ['anonymous_refused', anon?.refused ?? 0],
      ];
      for (const [event, n] of events)
        this.publishDelta(`me:${event}`, n, (d) => this.mirrorEvents.inc({ event }, d));
      for (const [kind, n] of Object.entries(c.requests))
        this.publishDelta(`mr:${kind}`, n, (d) => this.mirrorRequests.inc({ kind }, d));
      for (const [kind, n] of Object.entries(c.bytes))
        this.publishDelta(`mb:${kind}`, n, (d) => this.mirrorBytes.inc({ kind }, d));
      this.publishDelta('me:hit', c.manifestHits, (d) => this.mirrorEvents.inc({ event: 'manifest_hit' }, d));
      this.publishDelta('me:stale', c.staleManifests, (d) =>
        this.mirrorEvents.inc({ event: 'stale_manifest' }, d),
      );
      this.publishDelta('me:bad', c.digestMismatches, (d) =>
        this.mirrorEvents.inc({ event: 'digest_mismatch' }, d),
      );
    });
  }

  /** The counters of a seed, as deltas: its registry requests are all seed misses. */
  publishSeed(c: SeedCounters): void {
    const reason: RegistryFetchReason = 'seed_miss';
    this.delta('rf:seed_miss', c.registryRequests, (d) => this.registryFetches.inc({ reason }, d));
    for (const [source, n] of Object.entries(c.bytes))
      this.delta(`b:${source}`, n, (d) => this.bytes.inc({ source }, d));
    this.delta('tr:announce', c.tracker.announces, (d) =>
      this.trackerRequests.inc({ method: 'announce' }, d),
    );
    const inAnnounces = c.tracker.carriedLookups;
    this.delta('tr:lookup', c.tracker.lookups - inAnnounces, (d) =>
      this.trackerRequests.inc({ method: 'lookup' }, d),
    );
    this.delta('tr:lookup_in_announce', inAnnounces, (d) =>
      this.trackerRequests.inc({ method: 'lookup_in_announce' }, d),
    );
    this.delta('pr:handed_back', c.handedBack ?? 0, (d) =>
      this.peerRequests.inc({ result: 'handed_back' }, d),
    );
  }

  /** A seed's manifest relay's counters (ManifestRelay.counters), as deltas. */
  publishSeedManifests(c: Record<'memory' | 'registry' | 'stale' | 'refused' | 'joined', number>): void {
    for (const from of ['memory', 'registry', 'stale', 'refused', 'joined'] as const)
      this.delta(`sm:${from}`, c[from], (d) => this.seedManifests.inc({ from }, d));
  }

  /** The counters of this host's block server (BlockServer.counters), node or seed. */
  publishBlockServer(c: {
    served: number;
    unauthorized: number;
    deferred?: number;
    busy?: number;
    connectionsRefused?: number;
  }): void {
    this.delta('pr:served', c.served, (d) => this.peerRequests.inc({ result: 'served' }, d));
    this.delta('pr:deferred', c.deferred ?? 0, (d) => this.peerRequests.inc({ result: 'deferred' }, d));
    this.delta('pr:refused', c.unauthorized, (d) => this.peerRequests.inc({ result: 'refused' }, d));
    this.delta('pr:busy', c.busy ?? 0, (d) => this.peerRequests.inc({ result: 'busy' }, d));
    this.delta('pr:conn', c.connectionsRefused ?? 0, (d) =>
      this.peerRequests.inc({ result: 'connection_refused' }, d),
    );
  }

  /** Serves GET /metrics on `address` (host:port). */
  async serve(address: string): Promise<Server> {
    const i = address.lastIndexOf(':');
    const host = address.slice(0, i) || '127.0.0.1';
    const port = Number(address.slice(i + 1));
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new DfError('CONFIG', `metrics address ${address} is not host:port`);
    const server = createServer((req, res) => {
      const answer = (status: number, body?: string, headers: Record<string, string> = {}) => {
        if (!res.headersSent) res.writeHead(status, { 'content-type': 'text/plain', ...headers });
        res.end(req.method === 'HEAD' ? undefined : body);
      };
      if (req.method !== 'GET' && req.method !== 'HEAD')
        return answer(405, 'GET only\n', { allow: 'GET, HEAD' });
      const path = (req.url ?? '').split('?')[0];
      if (path !== '/metrics' && path !== '/') return answer(404, 'not found: GET /metrics\n');
      this.text().then(
        (body) => answer(200, body, { 'content-type': this.registry.contentType }),
        (err: unknown) => answer(500, `metrics failed: ${String(err)}\n`),
      );
    });
    await listenTcp(
      server,
      host.replace(/^\[|\]$/g, ''),
      port,
      'metrics',
      'node.metricsAddress (or --metrics-address)',
      // a scraper or two and a person with curl
      { max: 64 },
    );
    return server;
  }
}
