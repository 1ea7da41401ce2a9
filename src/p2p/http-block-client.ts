import type { Socket } from 'node:net';
import { Agent, buildConnector } from '../util/undici.js';
import { DfError } from '../errors.js';
import type { TokenBucket } from '../util/token-bucket.js';
import {
  declaredBodyHead,
  dispatchInto,
  errorTextHead,
  staleConnection,
  type DispatchedResponse,
} from '../util/dispatch-into.js';
import { bodyRemaining, rcvLowatEnabled, trackReads } from '../util/rcv-lowat.js';
import { busyAtSource, deferredBySource, handedBackBySource, sourceUnavailable } from '../fetch/types.js';
import { CLUSTER_TOKEN_HEADER, PEER_ID_HEADER } from './auth.js';
import { HANDED_BACK_HEADER, PIECE_DIGEST_HEADER } from './block-server.js';
import { clientTlsOptions, tlsFailure, type TlsMaterial } from './tls.js';

/**
 * A host that does not accept a connection within this time counts as down, not as slow (ms): generous,
 * since the answer to a SYN queues behind a saturated uplink like everything else.
 */
const CONNECT_TIMEOUT_MS = 10_000;

/** Bytes of an error answer's text kept for the message. */
const ERROR_TEXT_BYTES = 200;

/**
 * One GET of a blob range from a peer or seed, with the cluster token and the host's download limit; over
 * HTTPS with this host's client certificate when p2p.tls is set.
 */
export class HttpBlockClient {
  private readonly agent: Agent;
  private readonly scheme: 'http' | 'https';
  /** Plain TCP with SO_RCVLOWAT (src/util/rcv-lowat.ts): a block's body wakes the process per 64 KiB. */
  private readonly lowat: boolean;
  /** Connections opened so far (to any host): whether a request went out on one kept alive. */
  private connects = 0;

  constructor(
    private readonly clusterToken: string,
    private readonly download?: TokenBucket,
    /** This host's id in the P2P tier: a seed notes which node a range went to (tracker). */
    private readonly peerId = '',
    tls?: TlsMaterial,
  ) {
    this.scheme = tls ? 'https' : 'http';
    this.lowat = !tls && rcvLowatEnabled();
    const connect = buildConnector({ timeout: CONNECT_TIMEOUT_MS, ...(tls && clientTlsOptions(tls)) });
    this.agent = new Agent({
      keepAliveTimeout: 30_000,
      connections: 16,
      connect: (opts, cb) => {
        this.connects++;
        connect(opts, (err, socket) => {
          if (socket && this.lowat) trackReads(socket as Socket);
          // undici's callback type is a union of (error, null) and (null, socket)
          (cb as (e: Error | null, s: typeof socket) => void)(err, socket);
        });
      },
      // the caller's signal bounds each request (its limit grows with the size)
      headersTimeout: 0,
      bodyTimeout: 0,
    });
  }

  async get(
    address: string,
    digest: string,
    offset: number,
    length: number,
    signal: AbortSignal,
    extra: Record<string, string> = {},
    progress?: (data: Buffer, filled: number) => void,
    /** Told the piece digest the host sent (PIECE_DIGEST_HEADER: a seed serving a file it still fetches). */
    pieceDigest?: (sha256: Buffer) => void,
    /** Told whenever the host is heard from: its answer's head (any status) and every chunk of the body. */
    alive?: () => void,
  ): Promise<Buffer> {
    await this.download?.take(length, signal);
    const q = new URLSearchParams({ offset: String(offset), length: String(length), ...extra });
    const what = `${address}: ${digest} ${offset}+${length}`;
    let res: DispatchedResponse | undefined;
    let handedBack = false;
    let heard = false;
    const connects = this.connects;
    try {
      for (let attempt = 1; !res; attempt++) {
        try {
          res = await dispatchInto(this.agent, {
            origin: `${this.scheme}://${address}`,
            path: `/blobs/${digest}?${q}`,
            headers: {
              [CLUSTER_TOKEN_HEADER]: this.clusterToken,
              ...(this.peerId ? { [PEER_ID_HEADER]: this.peerId } : {}),
            },
            signal,
            ...(this.lowat ? { onRemaining: bodyRemaining } : {}),
            onHead: (status, headers) => {
              heard = true;
              alive?.();
              handedBack = status === 409 && headers[HANDED_BACK_HEADER] === 'registry';
              // an error answer: the start of its text, for the message; the rest is dropped unread
              if (status !== 200) return errorTextHead(ERROR_TEXT_BYTES);
              const sent = headers[PIECE_DIGEST_HEADER];
              if (pieceDigest && typeof sent === 'string' && /^[0-9a-f]{64}$/.test(sent))
                pieceDigest(Buffer.from(sent, 'hex'));
              const declared = headers['content-length'];
              if (typeof declared === 'string' && Number(declared) !== length)
                return new DfError(
                  'NETWORK',
                  `${what}: the host announced ${declared} bytes, not the ${length} asked for`,
                );
              return {
                into: Buffer.allocUnsafe(length),
                tooLong: (atLeast) =>
                  new DfError(
                    'NETWORK',
                    `${what}: the host sent more than the ${length} bytes asked for (at least ${atLeast}); response cut off`,
                  ),
              };
            },
            progress:
              alive && progress
                ? (data, filled) => {
                    alive();
                    progress(data, filled);
                  }
                : alive
                  ? () => alive()
                  : progress,
          });
        } catch (err) {
          // a kept-alive connection the host closed as the request went out, before any answer: once more
          // on a new one (a host that is down refuses that one, and only then counts against it). Not when
          // a connection was opened meanwhile: a new connection closed at once (a TLS handshake refused, a
          // host going down) is the host's answer.
          const reused = this.connects === connects;
          if (attempt === 1 && reused && !heard && !signal.aborted && staleConnection(err)) continue;
          throw err;
        }
      }
    } catch (err) {
      if (signal.aborted && signal.reason instanceof DfError) throw signal.reason;
      if (err instanceof DfError) throw err;
      // no connection at all: the host is down or unreachable (not a slow transfer)
      if ((err as { code?: string }).code === 'UND_ERR_CONNECT_TIMEOUT')
        throw new DfError(
          'NETWORK',
          `GET ${address} ${digest}: no connection within ${CONNECT_TIMEOUT_MS} ms`,
        );
      if (this.scheme === 'https') {
        const e = tlsFailure(address, err);
        if (e) throw e;
      }
      throw DfError.from(err, `GET ${address} ${digest}`);
    }
    if (res.statusCode !== 200) {
      const text = res.body.subarray(0, res.got).toString('utf8');
      const failure = `${what}: HTTP ${res.statusCode} ${text}`;
      // 413: the range is over the host's limit; 403: the host refuses this blob (a seed whose configuration
      // does not allow its registry). Another source may take it: not the host's fault
      if ([403, 404, 413, 416].includes(res.statusCode)) throw sourceUnavailable(failure);
      // a seed handed a planned run back: the node fetches it from the registry itself (fill-planner.ts)
      if (res.statusCode === 409 && handedBack) throw handedBackBySource(failure);
      if (res.statusCode === 409) throw deferredBySource(failure);
      // 429, or 503 with Retry-After (the host's response budget or disk is full): alive, asked again later
      if (res.statusCode === 429 || (res.statusCode === 503 && res.headers['retry-after'] !== undefined))
        throw busyAtSource(failure);
      if (res.statusCode === 401) throw new DfError('UNAUTHORIZED', `${failure} (check p2p.clusterToken)`);
      if (res.statusCode === 504) throw DfError.timeout(failure);
      // a seed whose origin sent another file than the digest (block-server.ts)
      if (res.statusCode === 502) throw new DfError('DIGEST_MISMATCH', failure);
      throw new DfError('NETWORK', failure);
    }
    if (res.got !== length) throw new DfError('NETWORK', `${what}: got ${res.got} of ${length} bytes`);
    return res.body;
  }

  /**
   * `GET /files/table` of a seed: the piece table of a raw file (at most `maxBytes`). A seed that answers
   * with an error status throws a DfError carrying its message (403 FORBIDDEN: origin not allowed there,
   * 404 NOT_FOUND, 409 DIGEST_MISMATCH, 401 UNAUTHORIZED: cluster token, 429 (or 503 with Retry-After): busy,
   * see isBusy; else NETWORK).
   */
  async fileTable(
    address: string,
    query: Record<string, string>,
    maxBytes: number,
    signal: AbortSignal,
  ): Promise<Buffer> {
    const what = `seed ${address}: piece table`;
    let res: DispatchedResponse;
    try {
      res = await dispatchInto(this.agent, {
        origin: `${this.scheme}://${address}`,
        path: `/files/table?${new URLSearchParams(query)}`,
        headers: { [CLUSTER_TOKEN_HEADER]: this.clusterToken },
        signal,
        onHead: (status, headers) => {
          // an error answer: the start of its text, for the message; the rest is dropped unread
          if (status !== 200) return errorTextHead(ERROR_TEXT_BYTES);
          return declaredBodyHead(headers, maxBytes, what, 'a piece table');
        },
      });
    } catch (err) {
      if (signal.aborted && signal.reason instanceof DfError) throw signal.reason;
      if (err instanceof DfError) throw err;
      throw DfError.from(err, what);
    }
    if (res.statusCode !== 200) {
      const text = res.body.subarray(0, res.got).toString('utf8');
      const failure = `seed ${address}: ${text}`;
      // the seed is fetching as many files as it may: alive, asked again later (not a seed that is down)
      if (res.statusCode === 429 || (res.statusCode === 503 && res.headers['retry-after'] !== undefined))
        throw busyAtSource(failure);
      const code =
        { 401: 'UNAUTHORIZED', 403: 'FORBIDDEN', 404: 'NOT_FOUND', 409: 'DIGEST_MISMATCH' }[res.statusCode] ??
        'NETWORK';
      throw new DfError(
        code as 'NETWORK',
        res.statusCode === 401 ? `${failure} (check p2p.clusterToken)` : failure,
      );
    }
    if (res.got !== res.body.length)
      throw new DfError('NETWORK', `${what}: got ${res.got} of ${res.body.length} bytes`);
    return res.body;
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => undefined);
  }
}
