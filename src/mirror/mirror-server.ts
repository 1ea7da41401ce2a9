import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { isIP } from 'node:net';
import { DfError } from '../errors.js';
import { isBusy } from '../fetch/types.js';
import { silentLogger, type Logger } from '../log.js';
import { readBody } from '../registry/http-body.js';
import { canonicalRegistry } from '../registry/reference.js';
import { listenTcp, splitHostPort } from '../util/listen.js';
import { ANONYMOUS, BlobAccess, credentialKey, manifestDigests } from './blob-access.js';
import type { BlobHolder } from './cluster-blobs.js';
import { MirrorBlobs } from './mirror-blobs.js';
import type { MirrorCounters } from './mirror-counters.js';
import { MAX_ERROR_BODY, REFUSAL_HEADERS, ManifestRelay } from './manifest-relay.js';
import type { ManifestStore } from './manifest-store.js';
import { parseMirrorRoute, type MirrorRoute } from './route.js';
import type { Upstream, UpstreamResponse } from './upstream.js';

export interface MirrorServerOptions {
  /** host:port to listen on (port 0: any). */
  listen: string;
  upstream: Upstream;
  /** Upstream for requests that name none (Docker's registry-mirrors: Docker Hub). */
  defaultRegistry: string;
  /** Registries this mirror serves (host[:port]); empty: any. Required when listening beyond loopback. */
  registries?: string[];
  /** A manifest is answered from memory for this long before the registry is asked again. */
  manifestTtlMs?: number;
  /** While the registry cannot be reached, a manifest this old is still answered. */
  staleManifestMs?: number;
  /**
   * Manifests on disk (the cache dir), so that they are answered while the registry is down after a restart
   * too, under the same rule as from memory (same credential hash, staleManifestMs).
   */
  manifestStore?: ManifestStore;
  /**
   * The manifests' relay (with its memory, disk and, on a node, the cluster's seed asked first); without it,
   * one of its own from upstream, manifestTtlMs, staleManifestMs and manifestStore.
   */
  manifests?: ManifestRelay;
  /**
   * The node's cache and P2P tier (the mirror runs where they live): blobs are answered from the cache or
   * in verified pieces through peers → seed → registry, after the registry said the engine may read them.
   * Without it every blob is streamed from the registry.
   */
  blobs?: BlobHolder;
  /** A registry's yes to a credential for a repository is remembered this long (one check per pull). */
  accessTtlMs?: number;
  /** Timeout of each range request to the registry when pieces come from it (ms). */
  pieceTimeoutMs?: number;
  /** Requests served at once; more get 503. */
  maxConcurrent?: number;
  logger?: Logger;
  now?: () => number;
  /** Called by close() after the listener stopped (e.g. to close the upstream's connections). */
  onClose?: () => Promise<void>;
}

export type { MirrorCounters } from './mirror-counters.js';

/** Connections the mirror keeps open at once (engines keep a few each); more are closed on arrival. */
const MAX_CONNECTIONS = 1024;

const isLoopback = (host: string) =>
  host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));

/**
 * The registry mirror: an OCI distribution pull endpoint (GET/HEAD of /v2/, manifests and blobs) for any
 * upstream registry, that engines use through their mirror settings (containerd hosts.toml, podman/CRI-O
 * registries.conf, Docker registry-mirrors). The engine's credentials are passed through to the registry
 * and its challenges back to the engine, so the mirror never answers anything the engine could not get
 * itself. Manifests are cached briefly per credential (and answered stale while the registry is down);
 * blobs are streamed from the registry and checked against their digest as they pass.
 */
export class MirrorServer {
  readonly counters: MirrorCounters = {
    requests: {},
    bytes: {},
    manifestHits: 0,
    staleManifests: 0,
    digestMismatches: 0,
    blobSources: {},
    clusterFallbacks: 0,
    accessChecks: 0,
    accessDenied: 0,
    outageAnswers: 0,
    seedManifests: 0,
  };
  private readonly access = new BlobAccess();
  private readonly blobs: MirrorBlobs;
  private readonly server: Server;
  private readonly log: Logger;
  private readonly relay: ManifestRelay;
  private readonly registries: Set<string>;
  private readonly stale: number;
  private readonly maxConcurrent: number;
  private readonly now: () => number;
  private active = 0;

  constructor(private readonly opts: MirrorServerOptions) {
    this.log = (opts.logger ?? silentLogger).child({ component: 'mirror' });
    // compared as references resolve hosts: `docker.io` in the list is registry-1.docker.io
    this.registries = new Set((opts.registries ?? []).map(canonicalRegistry));
    this.stale = opts.staleManifestMs ?? 3_600_000;
    this.maxConcurrent = opts.maxConcurrent ?? 256;
    this.now = opts.now ?? Date.now;
    this.relay =
      opts.manifests ??
      new ManifestRelay({
        upstream: opts.upstream,
        ttlMs: opts.manifestTtlMs,
        staleMs: this.stale,
        store: opts.manifestStore,
        logger: this.log,
        now: this.now,
      });
    this.blobs = new MirrorBlobs({
      upstream: opts.upstream,
      cluster: opts.blobs,
      access: this.access,
      accessTtlMs: opts.accessTtlMs ?? 300_000,
      staleMs: this.stale,
      pieceTimeoutMs: opts.pieceTimeoutMs ?? 30_000,
      counters: this.counters,
      log: this.log,
      now: this.now,
      relay: (up, res, method) => this.relayAnswer(up, res, method),
      sent: (kind, n) => this.sent(kind, n),
    });
    this.server = createServer((req, res) => void this.handle(req, res));
  }

  /** The registry requests on engines' behalf (its anonymous tokens' counters among them). */
  get upstream(): Upstream {
    return this.opts.upstream;
  }

  async start(): Promise<void> {
    const { host, port } = splitHostPort(this.opts.listen);
    if (!isLoopback(host) && this.registries.size === 0)
      throw new DfError(
        'CONFIG',
        `mirror.listen ${this.opts.listen} is not a loopback address: list the registries it may fetch from in mirror.registries (an open mirror would fetch any URL for anyone who can reach it)`,
      );
    await this.relay.init();
    // engines keep a few connections each; on loopback they all come from one address
    await listenTcp(this.server, host, port, 'registry mirror', 'mirror.listen', {
      max: MAX_CONNECTIONS,
      onRefused: () => this.count('connection_refused'),
    });
  }

  /** Bytes of blob pieces moved into the node's cache, by source (peer, seed, registry). */
  get pieceBytes(): Partial<Record<string, number>> {
    return this.opts.blobs?.bytes ?? {};
  }

  /** `host:port` the mirror listens on. */
  get address(): string {
    const a = this.server.address() as AddressInfo;
    return `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
    this.relay.close();
    await this.opts.blobs?.close();
    await this.opts.onClose?.();
  }

  private count(key: string): void {
    this.counters.requests[key] = (this.counters.requests[key] ?? 0) + 1;
  }

  private sent(kind: string, n: number): void {
    this.counters.bytes[kind] = (this.counters.bytes[kind] ?? 0) + n;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    res.setHeader('Docker-Distribution-API-Version', 'registry/2.0');
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.setHeader('Allow', 'GET, HEAD');
      return this.fail(res, 405, 'UNSUPPORTED', 'the mirror only serves pulls (GET and HEAD)');
    }
    if (this.active >= this.maxConcurrent)
      return this.fail(res, 503, 'TOOMANYREQUESTS', 'mirror busy, retry');
    this.active++;
    const ac = new AbortController();
    res.once('close', () => ac.abort());
    try {
      let route: MirrorRoute;
      try {
        route = parseMirrorRoute(req.url ?? '/', this.opts.defaultRegistry);
      } catch (err) {
        const e = DfError.from(err);
        this.count('invalid');
        return this.fail(
          res,
          e.code === 'NOT_FOUND' ? 404 : 400,
          e.code === 'NOT_FOUND' ? 'NOT_FOUND' : 'NAME_INVALID',
          e.message,
        );
      }
      const registry = route.kind === 'base' ? route.registry : route.ref.registry;
      if (this.registries.size && !this.registries.has(canonicalRegistry(registry))) {
        this.count('refused');
        return this.fail(res, 403, 'DENIED', `registry ${registry} is not mirrored here (mirror.registries)`);
      }
      const method = req.method;
      if (route.kind === 'base') await this.base(registry, req, res, ac.signal);
      else if (route.kind === 'manifest') await this.manifest(route, method, req, res, ac.signal);
      else {
        this.count('blob');
        await this.blobs.serve(route, method, req, res, ac.signal);
      }
    } catch (err) {
      const e = DfError.from(err);
      if (!ac.signal.aborted) this.log.warn({ err: e, url: req.url }, 'mirror request failed');
      if (!res.headersSent) {
        const status = isBusy(e)
          ? 503
          : ['NETWORK', 'TIMEOUT', 'REGISTRY', 'DIGEST_MISMATCH'].includes(e.code)
            ? 502
            : 500;
        this.fail(res, status, 'UNAVAILABLE', e.message);
      } else res.destroy();
    } finally {
      this.active--;
    }
  }

  private fail(res: ServerResponse, status: number, code: string, message: string): void {
    const body = JSON.stringify({ errors: [{ code, message }] });
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  }

  private async base(
    registry: string,
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    this.count('base');
    let up: UpstreamResponse;
    try {
      up = await this.opts.upstream.request('GET', registry, '/v2/', req.headers, signal);
    } catch (err) {
      // An engine's probe must not fail a pull the mirror may still answer from memory.
      this.log.debug({ err: DfError.from(err) }, 'registry unreachable on /v2/');
      res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': 2 });
      res.end('{}');
      return;
    }
    await this.relayAnswer(up, res, 'GET');
  }

  /** Relays a registry answer other than a manifest or blob body (errors, challenges) as it is. */
  private async relayAnswer(up: UpstreamResponse, res: ServerResponse, method: string): Promise<void> {
    const headers: Record<string, string> = {};
    for (const h of REFUSAL_HEADERS) {
      const v = up.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    // a longer error body is dropped: the status and challenge are what the engine needs
    const body = await readBody(up.body, MAX_ERROR_BODY, 'error answer').catch(() => Buffer.alloc(0));
    this.sendRefusal(up.status, headers, body, res, method);
  }

  private sendRefusal(
    status: number,
    headers: Record<string, string>,
    body: Buffer,
    res: ServerResponse,
    method: string,
  ): void {
    res.writeHead(status, { ...headers, 'content-length': String(body.length) });
    res.end(method === 'HEAD' ? undefined : body);
  }

  private async manifest(
    route: Extract<MirrorRoute, { kind: 'manifest' }>,
    method: string,
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    this.count('manifest');
    const auth = req.headers.authorization;
    const q = {
      registry: route.ref.registry,
      repository: route.ref.repository,
      reference: route.reference,
      ...(auth !== undefined && { authorization: auth }),
      ...(req.headers.accept !== undefined && { accept: req.headers.accept }),
    };
    const a = await this.relay.get(q, signal).catch((err: unknown) => {
      if (DfError.from(err).code === 'DIGEST_MISMATCH') this.counters.digestMismatches++;
      throw err;
    });
    if (a.kind === 'refused') return this.sendRefusal(a.status, a.headers, a.body, res, method);
    const m = a.manifest;
    if (a.from === 'memory') this.counters.manifestHits++;
    else if (a.from === 'seed') this.counters.seedManifests++;
    // (the relay logs it)
    else if (a.from === 'stale') this.counters.staleManifests++;
    // the registry let this credential read the repository when it answered (a stale copy: then, which a
    // restart or another host's fetch brings back), and the manifest names its blobs
    const repo = `${route.ref.registry}/${route.ref.repository}`;
    this.access.grant(a.public ? ANONYMOUS : credentialKey(auth), repo, m.storedAt);
    if (a.from !== 'memory') this.access.learn(repo, [m.digest, ...manifestDigests(m.body)]);
    this.sendManifest(m.body, m.contentType, m.digest, method, res);
  }

  private sendManifest(
    body: Buffer,
    contentType: string,
    digest: string,
    method: string,
    res: ServerResponse,
  ): void {
    res.writeHead(200, {
      'Content-Type': contentType,
      'Content-Length': body.length,
      'Docker-Content-Digest': digest,
    });
    if (method === 'HEAD') res.end();
    else {
      res.end(body);
      this.sent('manifest', body.length);
    }
  }
}
