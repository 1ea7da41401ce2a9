import * as grpc from '@grpc/grpc-js';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { DfError, type ErrorCode } from '../errors.js';
import { loadProto, lookup } from '../grpc/load-proto.js';
import { CLUSTER_TOKEN_HEADER, tokenMatches } from './auth.js';
import { DEFAULT_MAX_CONNECTIONS_PER_HOST, SEED_MAX_CONNECTIONS } from './listener-limits.js';
import { checkBitmap } from './tracker-limits.js';
import { grpcTlsFailure, type TlsMaterial } from './tls.js';
import { limitConnections, type ConnectionLimit } from '../util/connection-limit.js';
import { splitHostPort } from '../util/listen.js';
import type { AnnounceAnswer } from './tracker-messages.js';
import type { AnnounceMsg, LookupAnswer, LookupMsg, TrackerState } from './tracker-state.js';

export const TRACKER_PROTO = 'dfnode/tracker/v1/tracker.proto';

/** The largest tracker request accepted (bytes). */
export const MAX_REQUEST_BYTES = 2 << 20;

/** gRPC statuses of the tracker's refusals (TrackerState's errors) and their codes. */
const REFUSALS: Partial<Record<number, ErrorCode>> = {
  [grpc.status.INVALID_ARGUMENT]: 'INVALID_ARGUMENT',
  [grpc.status.PERMISSION_DENIED]: 'FORBIDDEN',
  [grpc.status.RESOURCE_EXHAUSTED]: 'NO_SPACE',
};
/** The codes of a tracker's refusals, over either transport: answered by a seed that is up. */
export const TRACKER_REFUSALS: readonly string[] = Object.values(REFUSALS) as ErrorCode[];

/** A client of one seed's tracker (gRPC: TrackerClient; HTTP on the block port: HttpTracker). */
export abstract class Tracker {
  abstract readonly address: string;
  /** Starts connecting if not connected yet (returns at once; a failure shows in the next call). */
  abstract connect(): void;
  abstract close(): void;
  /** One call of the tracker service, with the transport's deadline and the cluster token. */
  protected abstract call<Res>(
    method: 'Announce' | 'Lookup',
    req: object,
    signal?: AbortSignal,
  ): Promise<Res>;

  /**
   * Whether this tracker answers a lookup within an announce (AnnounceRequest.lookup_max_peers): unknown
   * until one was asked; false once one came back without it (a tracker that predates it).
   */
  foldsLookups: boolean | undefined;

  announce(m: Partial<AnnounceMsg>, signal?: AbortSignal): Promise<AnnounceAnswer> {
    return this.call('Announce', m, signal);
  }

  lookup(m: Partial<LookupMsg>, signal?: AbortSignal): Promise<LookupAnswer> {
    return this.call('Lookup', m, signal);
  }
}

/**
 * The tracker's answer to an announce (both transports), with the lookup it asked for: one call instead of
 * an announce and a lookup, made after the announce was applied (its bounds and checks are the lookup's).
 */
export function answerAnnounce(state: TrackerState, m: AnnounceMsg, source?: string): AnnounceAnswer {
  const max = m.lookup_max_peers ?? 0;
  const look = !m.leave && max > 0;
  // a malformed lookup is refused before the announce changes anything
  if (look && Number.isInteger(m.units) && m.units > 0) checkBitmap(m.lookup_want, m.units);
  const reply: AnnounceAnswer = state.announce(m, source);
  if (!look) return reply;
  state.counters.carriedLookups++;
  reply.lookup = state.lookup({
    blob: m.blob,
    peer_id: m.peer_id,
    zone: m.zone,
    want: [],
    max_peers: max,
    want_bitmap: m.lookup_want,
  });
  return reply;
}

/**
 * The host of a peer string (`host:port`, `[v6]:port` or a bare host), the source an announce is bound to;
 * an IPv4 address seen on a dual-stack socket (`::ffff:a.b.c.d`) is that IPv4 address, whichever transport
 * it came over.
 */
export function callerHost(peer: string | undefined): string | undefined {
  if (!peer) return undefined;
  const i = peer.lastIndexOf(':');
  const host = i > 0 && /^\d+$/.test(peer.slice(i + 1)) ? peer.slice(0, i) : peer;
  return host.replace(/^\[?::ffff:(\d+\.\d+\.\d+\.\d+)\]?$/i, '$1') || undefined;
}

export function trackerServiceConstructor(): grpc.ServiceClientConstructor {
  return lookup<grpc.ServiceClientConstructor>(loadProto(TRACKER_PROTO), 'dfnode.tracker.v1.Tracker');
}

/**
 * Serves the tracker on `address` (host:port) for cluster members only (the token, and with `tls` a client
 * certificate from the cluster CA). Returns the bound address.
 */
export async function serveTracker(
  state: TrackerState,
  address: string,
  clusterToken: string,
  tls?: TlsMaterial,
  opts: TrackerListenOptions = {},
): Promise<{ address: string; stop(): Promise<void> }> {
  // a full announce of the largest blob (2^22 units) is a 512 KiB bitmap: anything far larger is garbage
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_REQUEST_BYTES,
    // channelz (gRPC's introspection service, not served here) would track every call
    'grpc.enable_channelz': 0,
    // a connection without a call for this long gets a GOAWAY (a node's channel reconnects when it calls)
    'grpc.max_connection_idle_ms': opts.idleMs ?? TRACKER_IDLE_MS,
  });
  const guard =
    <Req, Res>(fn: (req: Req, source: string | undefined) => Res): grpc.handleUnaryCall<Req, Res> =>
    (call, cb) => {
      try {
        if (!tokenMatches(clusterToken, call.metadata.get(CLUSTER_TOKEN_HEADER)[0]?.toString())) {
          cb({ code: grpc.status.UNAUTHENTICATED, details: 'cluster token required' });
          return;
        }
        cb(null, fn(call.request, callerHost(call.getPeer())));
      } catch (err) {
        const e = DfError.from(err);
        cb({ code: e.grpcStatus, details: e.message });
      }
    };
  server.addService(trackerServiceConstructor().service, {
    Announce: guard((r: AnnounceMsg, source) => answerAnnounce(state, r, source)),
    Lookup: guard((r: LookupMsg) => state.lookup(r)),
  });
  // Our own listener, its connections handed to gRPC: grpc-js bounds neither how many connections it keeps
  // nor how long one that never speaks HTTP/2 stays (forever, measured), and opening one needs no token.
  const injector = server.createConnectionInjector(trackerServerCredentials(tls));
  const prefaceMs = opts.prefaceMs ?? TRACKER_PREFACE_MS;
  const sockets = new Set<Socket>();
  const tcp = createServer((sock) => {
    sockets.add(sock);
    sock.once('close', () => sockets.delete(sock));
    // an HTTP/2 client starts with its preface and a SETTINGS frame (33 bytes; with TLS its handshake first)
    const t = setTimeout(() => {
      if (sock.bytesRead < HTTP2_OPENING_BYTES) sock.destroy();
    }, prefaceMs);
    t.unref();
    sock.once('close', () => clearTimeout(t));
    injector.injectConnection(sock);
  });
  limitConnections(
    tcp,
    opts.limit ?? { max: SEED_MAX_CONNECTIONS, perAddress: DEFAULT_MAX_CONNECTIONS_PER_HOST },
  );
  const { host, port } = splitHostPort(address);
  await new Promise<void>((resolve, reject) => {
    tcp.once('error', (err) => {
      injector.destroy();
      reject(
        (err as NodeJS.ErrnoException).code === 'EADDRINUSE'
          ? new DfError(
              'CONFIG',
              `tracker address ${address} is in use (the tracker listens on the block server's port + 1); set p2p.listen`,
            )
          : new DfError('CONFIG', `tracker cannot listen on ${address}: ${(err as Error).message}`),
      );
    });
    tcp.listen(port, host, () => resolve());
  });
  return {
    address: `${address.slice(0, address.lastIndexOf(':'))}:${(tcp.address() as AddressInfo).port}`,
    stop: async () => {
      tcp.close();
      injector.destroy();
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        t.unref();
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
      for (const s of sockets) s.destroy();
    },
  };
}

/** Bounds of serveTracker's listener (tests make them short). */
export interface TrackerListenOptions {
  /** Connections at once, in all and per address (default: a seed's block server's). */
  limit?: ConnectionLimit;
  /** A connection that has not sent its HTTP/2 opening in this long is closed (default 10 s). */
  prefaceMs?: number;
  /** A connection without a call for this long is sent away (default 60 s). */
  idleMs?: number;
}

const TRACKER_PREFACE_MS = 10_000;
const TRACKER_IDLE_MS = 60_000;
/** The HTTP/2 client preface (24 bytes) and the SETTINGS frame header that must follow it (9). */
const HTTP2_OPENING_BYTES = 33;

function trackerServerCredentials(tls: TlsMaterial | undefined): grpc.ServerCredentials {
  if (!tls) return grpc.ServerCredentials.createInsecure();
  // true: a client certificate signed by the CA is required
  return grpc.ServerCredentials.createSsl(tls.ca, [{ cert_chain: tls.cert, private_key: tls.key }], true);
}

/** The name of the seed is not checked, only its chain (see clientTlsOptions in tls.ts for why). */
function trackerChannelCredentials(tls: TlsMaterial | undefined): grpc.ChannelCredentials {
  if (!tls) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(tls.ca, tls.key, tls.cert, { checkServerIdentity: () => undefined });
}

type Unary<Req, Res> = (
  req: Req,
  md: grpc.Metadata,
  opts: grpc.CallOptions,
  cb: (err: grpc.ServiceError | null, res?: Res) => void,
) => void;

/**
 * A client of one seed's tracker; every call has a deadline and carries the cluster token (over mutual TLS
 * with `tls`).
 */
export class TrackerClient extends Tracker {
  private readonly client: grpc.Client & {
    Announce: Unary<Partial<AnnounceMsg>, { need_full: boolean; interval_ms: number }>;
    Lookup: Unary<Partial<LookupMsg>, LookupAnswer>;
  };

  constructor(
    readonly address: string,
    private readonly clusterToken: string,
    private readonly timeoutMs = 1000,
    private readonly tls?: TlsMaterial,
  ) {
    super();
    const Ctor = trackerServiceConstructor();
    this.client = new Ctor(address, trackerChannelCredentials(tls), {
      'grpc.max_receive_message_length': 8 << 20,
      'grpc.enable_channelz': 0,
      // the SNI name: grpc-js would send the dialled host, an IP for many seeds (which Node warns about)
      ...(tls && { 'grpc.ssl_target_name_override': 'dfnode-tracker' }),
    }) as never;
  }

  /** Starts connecting if not connected yet (returns at once; a failure shows in the next call). */
  connect(): void {
    this.client.waitForReady(Date.now() + this.timeoutMs, () => undefined);
  }

  protected call<Res>(method: 'Announce' | 'Lookup', req: object, signal?: AbortSignal): Promise<Res> {
    const md = new grpc.Metadata();
    md.set(CLUSTER_TOKEN_HEADER, this.clusterToken);
    return new Promise<Res>((resolve, reject) => {
      const fn = this.client[method].bind(this.client) as unknown as Unary<object, Res>;
      const call = fn(req, md, { deadline: Date.now() + this.timeoutMs }, (err, res) => {
        signal?.removeEventListener('abort', onAbort);
        if (!err) return resolve(res!);
        const what = `tracker ${this.address} ${method}`;
        const tlsErr =
          this.tls && err.code === grpc.status.UNAVAILABLE
            ? grpcTlsFailure(what, err.details, err)
            : undefined;
        if (err.code === grpc.status.UNAUTHENTICATED)
          reject(new DfError('UNAUTHORIZED', `${what}: ${err.details} (check p2p.clusterToken)`));
        else if (tlsErr) reject(tlsErr);
        else if (err.code === grpc.status.DEADLINE_EXCEEDED)
          reject(DfError.timeout(`${what}: no answer within ${this.timeoutMs} ms`));
        // the tracker's own refusals, as over HTTP (answerError): the seed is up
        else if (REFUSALS[err.code]) reject(new DfError(REFUSALS[err.code]!, `${what}: ${err.details}`));
        else reject(new DfError('NETWORK', `${what}: ${err.details || err.message}`));
      }) as unknown as grpc.ClientUnaryCall;
      const onAbort = () => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  close(): void {
    this.client.close();
  }
}
