import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { ConnectionLimit } from '../util/connection-limit.js';
import { listenTcp, splitHostPort } from '../util/listen.js';
import { whenSent } from '../util/send-queue.js';
import { bound } from '../util/timers.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { TokenBucket } from '../util/token-bucket.js';
import { awayUnits, isDeferred, isHandedBack, isPlannerAnswer } from '../fetch/types.js';
import { CLUSTER_TOKEN_HEADER, PEER_ID_HEADER, tokenMatches } from './auth.js';
import { DEFAULT_MAX_RANGE_BYTES, parseBlockRequest } from './block-request.js';
import { MANIFEST_PATH_PREFIX, type SeedManifests } from './manifest-request.js';
import { ByteBudget } from './byte-budget.js';
import { AWAY_HEADER, encodeUnitRanges } from './unit-ranges.js';
import { DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_HOST } from './listener-limits.js';
import type { PreheatAnswer } from './preheat-request.js';
import { abortOnClose, handleFileTable, handleManifest, handlePreheat } from './seed-endpoints.js';
import { refusedClientReason, serverTlsOptions, type TlsMaterial } from './tls.js';
import { handleTrackerPost, TRACKER_HTTP_PREFIX, TrackerBodies } from './tracker-http.js';
import { UploadSlots } from './upload-slots.js';
import type { TrackerState } from './tracker-state.js';
import type { BlobHint, BlobProvider } from './served-blob.js';

/** Response header: SHA-256 (hex) of a piece a seed serves while it still fetches the file (cut-through). */
export const PIECE_DIGEST_HEADER = 'x-dfnode-piece-sha256';
/** On a 409: the seed handed the planned run back; the node takes it from the registry itself. */
export const HANDED_BACK_HEADER = 'x-dfnode-take-from';

export type { BlobHint, BlobProvider, ServedBlob, ServedBytes } from './served-blob.js';

export interface BlockServerOptions {
  provider: BlobProvider;
  clusterToken: string;
  /** Host-wide upload limit. */
  upload?: TokenBucket;
  /**
   * Idle limit of one request (ms; default 30 s): a request that makes no progress this long (no answer
   * from the provider, no part settled, nothing written to a client that reads) is aborted. A response that
   * moves slowly but steadily, such as many 4 MiB pieces sharing a thin uplink, is not cut: the client's
   * own time limit decides when that is too slow.
   */
  requestTimeoutMs?: number;
  logger?: Logger;
  /** Mutual TLS (p2p.tls): HTTPS, and only clients with a certificate from the cluster CA get through. */
  tls?: TlsMaterial;
  /** The longest range answered (bytes; 413 beyond, before anything is looked up). Default 16 MiB. */
  maxRangeBytes?: number;
  /**
   * Bytes of responses held at once (default 256 MiB, at least maxRangeBytes): requests beyond it wait for
   * earlier responses to be sent, so that a flood of requests costs sockets, not memory.
   */
  maxInflightBytes?: number;
  /**
   * Requests that may wait for that budget (default 1024); beyond, 503. As many again may wait for pieces
   * still on their way from the origin (ServedBlob.ready); beyond, 503 as well.
   */
  maxQueuedRequests?: number;
  /**
   * Background-fill runs (`fill=1`) served at once (a node: p2p.uploadSlots); one more may wait a moment for
   * a slot (upload-slots.ts), others are refused with 429, so that askers take other holders instead of
   * sharing one uplink until they time out. Reads a container waits on are never refused for it. 0 or
   * undefined: no limit (seeds). A slot is free once at most `slotTailBytes` of its answer are left to send
   * (default 64 KiB; src/util/send-queue.ts).
   */
  uploadSlots?: number;
  slotTailBytes?: number;
  /** How long a fill run waits for a slot before the 429 (ms; default SLOT_WAIT_MS, upload-slots.ts). */
  slotWaitMs?: number;
  /** Serves `POST /preheat` (a seed: see preheat-request.ts); without it, that path is 404. */
  preheat?: (images: string[]) => PreheatAnswer;
  /**
   * Serves `GET /files/table?url=&digest=` (a seed: the piece table of a raw file, src/mirror; `origin`: the
   * headers the node gives for the origin, origin-headers.ts); without it, that path is 404. Not bound by requestTimeoutMs: the seed may first fetch the whole file.
   */
  fileTable?: (
    query: URLSearchParams,
    signal: AbortSignal,
    origin: Record<string, string>,
  ) => Promise<Buffer>;
  /**
   * Serves `GET /manifests/v2/...` (a seed: manifests relayed for the nodes' mirrors with the engine's
   * credentials, see src/mirror/seed-manifests.ts); without it, that path is 404.
   */
  manifests?: SeedManifests;
  /** Serves the tracker over HTTP (a seed: `POST /tracker/v1/…`, see tracker-http.ts); without it, 404. */
  tracker?: TrackerState;
  /** Bytes of tracker request bodies read at once (default 64 MiB); beyond, 503. */
  maxTrackerBodyBytes?: number;
  /**
   * TCP connections open at once, in all and from one address (p2p.maxConnections, p2p.maxConnectionsPerHost;
   * defaults in listener-limits.ts): more are closed on arrival,
   * counted and warned about once per address.
   */
  maxConnections?: number;
  maxConnectionsPerHost?: number;
}

/**
 * The peer data plane: `GET /blobs/<digest>?offset=&length=` (or a `Range: bytes=a-b` header) answers the
 * verified stored bytes of that range, only to requests carrying the cluster token. 401 without it, 404 for
 * a blob not served, 416 when a unit under the range is not held, 413 for a range over maxRangeBytes,
 * 400/404/405 for anything else malformed (parseBlockRequest): every request gets an answer, none can stop
 * the server. With p2p.tls, HTTPS that requires a client certificate from the cluster CA, and the token as
 * well.
 */
export class BlockServer {
  private server: Server | undefined;
  private active = 0;
  /** Fill runs being served, and those waiting a moment for a slot (see uploadSlots). */
  private readonly fillSlots: UploadSlots;
  /** Planned requests for blobs with upload slots of their own being served (ServedBlob.uploadSlots). */
  private blobSlotsActive = 0;
  /** Requests waiting for pieces still on their way from the origin (ServedBlob.ready). */
  private waitingForOrigin = 0;
  /**
   * Requests refused for a bad token (or, with TLS, handshakes refused), ranges answered, bytes sent,
   * ranges not held, runs deferred (seed), fill runs refused with all upload slots taken, connections closed
   * on arrival (maxConnections, maxConnectionsPerHost).
   */
  readonly counters = {
    unauthorized: 0,
    served: 0,
    bytes: 0,
    missing: 0,
    deferred: 0,
    busy: 0,
    connectionsRefused: 0,
  };
  private readonly log: Logger;
  /** Addresses already warned about (a refused TLS handshake or cluster token). */
  private readonly warned = new Set<string>();
  private readonly budget: ByteBudget;
  private readonly trackerBodies: TrackerBodies;

  constructor(private readonly opts: BlockServerOptions) {
    this.log = opts.logger ?? silentLogger;
    const maxRange = opts.maxRangeBytes ?? DEFAULT_MAX_RANGE_BYTES;
    this.budget = new ByteBudget(
      Math.max(maxRange, opts.maxInflightBytes ?? 256 * 1024 * 1024),
      opts.maxQueuedRequests ?? 1024,
    );
    this.trackerBodies = new TrackerBodies(opts.maxTrackerBodyBytes);
    this.fillSlots = new UploadSlots(opts.uploadSlots ?? 0, { waitMs: opts.slotWaitMs });
  }

  /**
   * The bound on open connections (maxConnections, maxConnectionsPerHost), counting and warning about what
   * it refuses: this server's, and a seed's gRPC tracker listener's too.
   */
  get connectionLimit(): ConnectionLimit {
    return {
      max: this.opts.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      perAddress: this.opts.maxConnectionsPerHost ?? DEFAULT_MAX_CONNECTIONS_PER_HOST,
      onRefused: (from, bound) => {
        this.counters.connectionsRefused++;
        this.warnOnce(
          from,
          bound === 'total' ? 'too many connections' : 'too many connections from this address',
          bound === 'total'
            ? 'refused connections: p2p.maxConnections are open (a flood, or raise it for a large swarm)'
            : 'refused connections from one address: p2p.maxConnectionsPerHost are open from it',
        );
      },
    };
  }

  /** Requests waiting for bytes of the response budget (maxInflightBytes). */
  get waiting(): number {
    return this.budget.queued;
  }

  /** Fill runs holding an upload slot, and those waiting a moment for one. */
  get fillRuns(): { taken: number; waiting: number } {
    return { taken: this.fillSlots.taken, waiting: this.fillSlots.waiting };
  }

  /** Uploads in progress: the load a node reports to the tracker. */
  get load(): number {
    return this.active;
  }

  async listen(address: string): Promise<string> {
    const { host, port } = splitHostPort(address);
    const handler = (req: IncomingMessage, res: ServerResponse) => {
      this.handle(req, res).catch((err: unknown) => {
        this.log.warn({ err: DfError.from(err), url: req.url }, 'peer request failed unexpectedly');
        if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
        res.end('internal error');
      });
    };
    let server: Server;
    if (this.opts.tls) {
      const s = createTlsServer(serverTlsOptions(this.opts.tls), handler);
      s.on('tlsClientError', (err, socket) => this.tlsRefused(err, socket));
      server = s;
    } else server = createServer(handler);
    server.keepAliveTimeout = 30_000;
    await listenTcp(server, host, port, 'peer server', 'p2p.listen', this.connectionLimit);
    this.server = server;
    const a = server.address() as AddressInfo;
    return `${host.includes(':') ? `[${host}]` : host}:${a.port}`;
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  /**
   * A client refused in the TLS handshake (no certificate, one the cluster CA did not sign, plain HTTP)
   * counts as unauthorized; warned once per address. A connection that closes without one (a TCP probe)
   * does not count.
   */
  private tlsRefused(err: Error, socket: TLSSocket): void {
    const reason = refusedClientReason(err, socket.authorizationError);
    if (!reason) return;
    this.counters.unauthorized++;
    this.warnOnce(
      socket.remoteAddress ?? '?',
      reason,
      'refused a peer without a certificate from the cluster CA (p2p.tls.ca)',
    );
  }

  /** One warning per address (bounded memory): a misconfigured host repeats its request many times. */
  private warnOnce(from: string, reason: string, msg: string): void {
    if (this.warned.size >= 1024) this.warned.clear();
    if (this.warned.has(from)) return;
    this.warned.add(from);
    this.log.warn({ peer: from, reason }, msg);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const fail = (status: number, msg: string) => {
      // with its length: the client keeps the connection without reading chunks (src/util/raw-http.ts)
      if (!res.headersSent)
        res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(msg) });
      res.end(msg);
    };
    const preheat = this.opts.preheat && (req.url ?? '').split('?')[0] === '/preheat';
    // webhooks of registries send a fixed Authorization header: the token as a bearer token, there only
    const bearer = preheat ? /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1] : undefined;
    if (
      !tokenMatches(this.opts.clusterToken, req.headers[CLUSTER_TOKEN_HEADER]) &&
      !tokenMatches(this.opts.clusterToken, bearer)
    ) {
      this.counters.unauthorized++;
      this.warnOnce(
        req.socket.remoteAddress ?? '?',
        req.headers[CLUSTER_TOKEN_HEADER] ? 'wrong cluster token' : 'no cluster token',
        'refused a block request without the cluster token (p2p.clusterToken)',
      );
      return fail(401, 'cluster token required');
    }
    if (preheat) return handlePreheat(req, res, fail, this.opts.preheat!, this.log);
    if (this.opts.tracker && (req.url ?? '').startsWith(TRACKER_HTTP_PREFIX))
      // a tracker request is a few KiB at most: its body has 10 s to arrive
      return handleTrackerPost(
        req,
        res,
        this.opts.tracker,
        Math.min(this.opts.requestTimeoutMs ?? 30_000, 10_000),
        this.trackerBodies,
      );
    if (this.opts.fileTable && (req.url ?? '').split('?')[0] === '/files/table')
      return handleFileTable(req, res, fail, this.opts.fileTable);
    if (this.opts.manifests && (req.url ?? '').startsWith(MANIFEST_PATH_PREFIX))
      return handleManifest(req, res, fail, this.opts.manifests);
    const range = parseBlockRequest(req.method, req.url, req.headers.range, this.opts.maxRangeBytes);
    if (!range.ok) {
      if (range.status === 405) res.setHeader('allow', 'GET, HEAD');
      return fail(range.status, range.message);
    }
    const slots = this.fillSlots.slots;
    const slot = range.fill && slots > 0;
    const ac = new AbortController();
    abortOnClose(res, ac);
    if (slot) {
      const got = this.fillSlots.acquire(ac.signal);
      // an asker that leaves while it waits closes its end (the response's close comes only once answered)
      const left = () => ac.abort(DfError.aborted('client went away'));
      if (got !== true) req.socket.once('end', left);
      const ok = got === true || (await got);
      req.socket.off('end', left);
      // the asker went away while it waited: nobody to answer (a slot it was given goes to the next)
      if (ac.signal.aborted) {
        if (ok) this.fillSlots.release();
        return void res.destroy();
      }
      if (!ok) {
        this.counters.busy++;
        res.setHeader('retry-after', '1');
        return fail(429, `busy: all ${slots} upload slots are taken; ask another holder`);
      }
    }
    const idleMs = this.opts.requestTimeoutMs ?? 30_000;
    const timeout = () => ac.abort(DfError.timeout(`peer request made no progress for ${idleMs} ms`));
    let timer = setTimeout(timeout, idleMs);
    let finished = false;
    // re-armed on every progress: the limit is on a stalled request, not on a slow transfer
    const alive = () => {
      if (ac.signal.aborted || finished) return;
      clearTimeout(timer);
      timer = setTimeout(timeout, idleMs);
    };
    this.active++;
    let blobSlot = false;
    try {
      const hint: BlobHint = {
        repo: range.repo,
        size: range.size,
        peer: typeof req.headers[PEER_ID_HEADER] === 'string' ? req.headers[PEER_ID_HEADER] : undefined,
        defer: range.defer,
        origin: range.origin,
        alive,
      };
      const blob = await this.opts.provider.get(range.digest, hint, ac.signal);
      alive();
      if (!blob) return fail(404, 'blob not served here');
      if (range.offset + range.length > blob.size) return fail(416, 'range beyond the blob');
      // before anything claims the range for the peer (ready, read)
      const peer = hint.peer;
      if (peer && (blob.undelivered || blob.delivered))
        res.once('close', () => {
          if (hint.handedBack) return;
          if (res.writableFinished && res.statusCode < 300)
            blob.delivered?.(range.offset, range.length, peer);
          else blob.undelivered?.(range.offset, range.length, peer);
        });
      if (blob.ready) {
        if (this.waitingForOrigin >= (this.opts.maxQueuedRequests ?? 1024)) {
          res.setHeader('retry-after', '1');
          return fail(
            503,
            `busy: ${this.waitingForOrigin} requests wait for the origin already; retry later`,
          );
        }
        this.waitingForOrigin++;
        try {
          await blob.ready(range.offset, range.length, ac.signal, hint);
        } finally {
          this.waitingForOrigin--;
        }
        alive();
      }
      if (blob.uploadSlots && range.defer) {
        if (this.blobSlotsActive >= blob.uploadSlots) {
          this.counters.busy++;
          // not sent: the range is no longer on its way to this peer (ready claimed it)
          if (peer) blob.undelivered?.(range.offset, range.length, peer);
          res.setHeader('retry-after', '1');
          return fail(429, `busy: sending ${blob.uploadSlots} pieces already; take it from a peer or retry`);
        }
        this.blobSlotsActive++;
        blobSlot = true;
      }
      // given back once the response is done (sent, or the client went away)
      const release = await this.budget.take(range.length, ac.signal);
      if (ac.signal.aborted) {
        release();
        throw ac.signal.reason;
      }
      res.once('close', release);
      const served = await blob.read(range.offset, range.length, ac.signal, hint);
      if (!served) {
        this.counters.missing++;
        return fail(416, 'range not held');
      }
      const parts: readonly Promise<Buffer>[] = Buffer.isBuffer(served) ? [Promise.resolve(served)] : served;
      // the first part settles before the status is sent: a range that cannot be had at all gets its
      // status code (404, 403, 503, ...), not a cut response
      const first = await bound(parts[0] ?? Promise.resolve(Buffer.alloc(0)), {
        signal: ac.signal,
        what: 'range',
      });
      const headers: Record<string, string | number> = {
        'content-type': 'application/octet-stream',
        'content-length': range.length,
      };
      const pieceDigest = blob.pieceDigest?.(range.offset, range.length);
      if (pieceDigest) headers[PIECE_DIGEST_HEADER] = pieceDigest;
      if (range.header) {
        headers['content-range'] = `bytes ${range.offset}-${range.offset + range.length - 1}/${blob.size}`;
      }
      alive();
      this.counters.served++;
      res.writeHead(range.header ? 206 : 200, headers);
      if (req.method === 'HEAD') return void res.end();
      await this.send(res, first, parts.slice(1), range.length, ac.signal, alive);
    } catch (err) {
      if (ac.signal.aborted && res.destroyed) return;
      const e = DfError.from(err);
      // deferrals and busy answers are the normal flow of a swarm (counted, not logged with a stack)
      if (!isPlannerAnswer(e)) this.log.debug({ err: e, url: req.url }, 'peer request failed');
      if (e.code === 'NO_SPACE') {
        res.setHeader('retry-after', '1');
        return fail(503, e.message);
      }
      if (isDeferred(e) || isHandedBack(e)) {
        if (isHandedBack(e)) res.setHeader(HANDED_BACK_HEADER, 'registry');
        else {
          this.counters.deferred++;
          const away = awayUnits(e);
          if (away.length) res.setHeader(AWAY_HEADER, encodeUnitRanges(away));
        }
        return fail(409, e.message);
      }
      // a seed's origin sent another file than the digest named: the seed is fine, the file is not
      if (e.code === 'DIGEST_MISMATCH') return fail(502, e.message);
      fail(
        e.code === 'NOT_FOUND' ? 404 : e.code === 'FORBIDDEN' ? 403 : e.code === 'TIMEOUT' ? 504 : 503,
        e.message,
      );
    } finally {
      finished = true;
      clearTimeout(timer);
      this.active--;
      // a fill run's slot is free once its answer has nearly left the socket, not when the kernel took it
      if (slot)
        void whenSent(req.socket, this.opts.slotTailBytes ?? SLOT_TAIL_BYTES).then(() =>
          this.fillSlots.release(),
        );
      if (blobSlot) this.blobSlotsActive--;
    }
  }

  /**
   * Writes `first`, then every further part as it settles, in slices of SEND_SLICE (upload limit and socket
   * back-pressure respected, `alive` told of each slice gone), and ends the response; exactly `length`
   * bytes or the response is cut.
   */
  private async send(
    res: ServerResponse,
    first: Buffer,
    rest: readonly Promise<Buffer>[],
    length: number,
    signal: AbortSignal,
    alive: () => void,
  ): Promise<void> {
    let sent = 0;
    const write = async (b: Buffer) => {
      if (sent + b.length > length) throw DfError.internal(`served parts exceed the ${length}-byte range`);
      for (let at = 0; at < b.length; at += SEND_SLICE) {
        const slice = b.subarray(at, at + SEND_SLICE);
        await this.opts.upload?.take(slice.length, signal);
        sent += slice.length;
        this.counters.bytes += slice.length;
        if (!res.write(slice)) await once(res, 'drain', { signal });
        alive();
      }
    };
    try {
      await write(first);
      for (const p of rest) {
        const b = await bound(p, { signal, what: 'range' });
        alive();
        await write(b);
      }
      if (sent !== length) throw DfError.internal(`served parts hold ${sent} of ${length} bytes`);
      res.end();
    } catch (err) {
      if (!res.destroyed) this.log.debug({ err: DfError.from(err) }, 'peer response cut short');
      res.destroy();
    }
  }
}

/** Bytes written (and taken from the upload limit) at a time: progress of a response is seen per slice. */
const SEND_SLICE = 64 * 1024;
/** An upload slot is free when this little of its run is left to send (docs/p2p.md, upload slots). */
const SLOT_TAIL_BYTES = 64 * 1024;
