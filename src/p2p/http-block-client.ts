import { DfError } from '../errors.js';
import type { TokenBucket } from '../util/token-bucket.js';
import { declaredBodyHead, errorTextHead, type HttpAnswer } from '../util/http-answer.js';
import { RawHttpPool } from '../util/raw-http.js';
import { rcvLowatEnabled, type BodyHoldHooks } from '../util/rcv-lowat.js';
import { busyAtSource, deferredBySource, handedBackBySource, sourceUnavailable } from '../fetch/types.js';
import { CLUSTER_TOKEN_HEADER, PEER_ID_HEADER } from './auth.js';
import { HANDED_BACK_HEADER, PIECE_DIGEST_HEADER } from './block-server.js';
import { AWAY_HEADER, parseUnitRanges } from './unit-ranges.js';
import { MANIFEST_FROM_HEADER } from './manifest-request.js';
import { encodeOriginHeaders, ORIGIN_HEADERS_HEADER } from './origin-headers.js';
import { clientTlsOptions, tlsFailure, type TlsMaterial } from './tls.js';

/**
 * A host that does not accept a connection within this time counts as down, not as slow (ms): generous,
 * since the answer to a SYN queues behind a saturated uplink like everything else.
 */
const CONNECT_TIMEOUT_MS = 10_000;

/** Bytes of an error answer's text kept for the message. */
const ERROR_TEXT_BYTES = 200;

/** What a caller of HttpBlockClient.get may hear of, and how urgent the range is. */
export interface BlockGetHooks extends BodyHoldHooks {
  /** Told of every read of the body: the range's buffer and how much of it is filled. */
  progress?: (data: Buffer, filled: number) => void;
  /** Told the piece digest the host sent (PIECE_DIGEST_HEADER: a seed serving a file it still fetches). */
  pieceDigest?: (sha256: Buffer) => void;
  /** Told whenever the host is heard from: its answer's head (any status) and every chunk of the body. */
  alive?: () => void;
}

/**
 * One GET of a blob range from a peer or seed, with the cluster token and the host's download limit; over
 * HTTPS with this host's client certificate when p2p.tls is set. Bodies are read straight into the range's
 * buffer (src/util/raw-http.ts).
 */
export class HttpBlockClient {
  private readonly pool: RawHttpPool;
  private readonly tls: boolean;

  constructor(
    private readonly clusterToken: string,
    private readonly download?: TokenBucket,
    /** This host's id in the P2P tier: a seed notes which node a range went to (tracker). */
    private readonly peerId = '',
    tls?: TlsMaterial,
  ) {
    this.tls = tls !== undefined;
    this.pool = new RawHttpPool({
      ...(tls && { tls: clientTlsOptions(tls) }),
      connectTimeoutMs: CONNECT_TIMEOUT_MS,
      maxPerHost: 16,
      idleMs: 30_000,
      // plain TCP with SO_RCVLOWAT (src/util/rcv-lowat.ts): a block's body wakes the process per 64 KiB
      lowat: !tls && rcvLowatEnabled(),
    });
  }

  /** A failed request as a DfError: TLS failures told as such, the signal's reason as it is. */
  private failure(err: unknown, signal: AbortSignal, what: string): DfError {
    if (signal.aborted && signal.reason instanceof DfError) return signal.reason;
    if (this.tls) {
      const e = tlsFailure(what, err);
      if (e) return e;
    }
    return DfError.from(err, what);
  }

  async get(
    address: string,
    digest: string,
    offset: number,
    length: number,
    signal: AbortSignal,
    extra: Record<string, string> = {},
    hooks: BlockGetHooks = {},
  ): Promise<Buffer> {
    const { progress, pieceDigest, alive } = hooks;
    await this.download?.take(length, signal);
    const q = new URLSearchParams({ offset: String(offset), length: String(length), ...extra });
    const what = `${address}: ${digest} ${offset}+${length}`;
    let res: HttpAnswer;
    let handedBack = false;
    let away: number[] = [];
    try {
      res = await this.pool.request(address, {
        path: `/blobs/${digest}?${q}`,
        headers: {
          [CLUSTER_TOKEN_HEADER]: this.clusterToken,
          ...(this.peerId ? { [PEER_ID_HEADER]: this.peerId } : {}),
        },
        signal,
        onHead: (status, headers) => {
          alive?.();
          handedBack = status === 409 && headers[HANDED_BACK_HEADER] === 'registry';
          if (status === 409 && !handedBack) away = parseUnitRanges(headers[AWAY_HEADER]);
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
          return { into: Buffer.allocUnsafe(length), tooLong: () => undefined };
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
        holdMs: hooks.holdMs,
        onHurry: hooks.onHurry,
      });
    } catch (err) {
      throw this.failure(err, signal, `GET ${address} ${digest}`);
    }
    if (res.statusCode !== 200) {
      const text = res.body.subarray(0, res.got).toString('utf8');
      const failure = `${what}: HTTP ${res.statusCode} ${text}`;
      // 413: the range is over the host's limit; 403: the host refuses this blob (a seed whose configuration
      // does not allow its registry). Another source may take it: not the host's fault
      if ([403, 404, 413, 416].includes(res.statusCode)) throw sourceUnavailable(failure);
      // a seed handed a planned run back: the node fetches it from the registry itself (fill-planner.ts)
      if (res.statusCode === 409 && handedBack) throw handedBackBySource(failure);
      if (res.statusCode === 409) throw deferredBySource(failure, away);
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
   * `GET /files/table` of a seed: the piece table of a raw file (at most `maxBytes`), with the headers the
   * seed is to send the file's origin (`origin`: the user's `--header`s, credentials among them). A seed that answers
   * with an error status throws a DfError carrying its message (403 FORBIDDEN: origin not allowed there,
   * 404 NOT_FOUND, 409 DIGEST_MISMATCH, 401 UNAUTHORIZED: cluster token, 429 (or 503 with Retry-After): busy,
   * see isBusy; else NETWORK).
   */
  async fileTable(
    address: string,
    query: Record<string, string>,
    maxBytes: number,
    signal: AbortSignal,
    origin: Readonly<Record<string, string>> = {},
  ): Promise<Buffer> {
    const what = `seed ${address}: piece table`;
    const forOrigin = encodeOriginHeaders(origin);
    let res: HttpAnswer;
    try {
      res = await this.pool.request(address, {
        path: `/files/table?${new URLSearchParams(query)}`,
        headers: {
          [CLUSTER_TOKEN_HEADER]: this.clusterToken,
          ...(forOrigin !== undefined && { [ORIGIN_HEADERS_HEADER]: forOrigin }),
        },
        signal,
        onHead: (status, headers) => {
          // an error answer: the start of its text, for the message; the rest is dropped unread
          if (status !== 200) return errorTextHead(ERROR_TEXT_BYTES);
          return declaredBodyHead(headers, maxBytes, what, 'a piece table');
        },
      });
    } catch (err) {
      throw this.failure(err, signal, what);
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

  /**
   * `GET /manifests/v2/...` of a seed (manifest-request.ts), with the engine's Authorization and Accept: the
   * answer as the seed gave it, a manifest of at most `maxBytes`, the registry's refusals' bodies at most
   * 64 KiB, other answers' text cut to 200 bytes. Throws only when the seed could not be asked (NETWORK,
   * TIMEOUT, a TLS refusal).
   */
  async manifest(
    address: string,
    target: string,
    engine: { authorization?: string; accept?: string },
    maxBytes: number,
    signal: AbortSignal,
  ): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: Buffer }> {
    const what = `seed ${address}: manifest`;
    let res: HttpAnswer;
    try {
      res = await this.pool.request(address, {
        path: `/manifests${target}`,
        headers: {
          [CLUSTER_TOKEN_HEADER]: this.clusterToken,
          ...(engine.authorization !== undefined && { authorization: engine.authorization }),
          ...(engine.accept !== undefined && { accept: engine.accept }),
        },
        signal,
        onHead: (status, headers) => {
          if (status === 200) return declaredBodyHead(headers, maxBytes, what, 'a manifest');
          if (headers[MANIFEST_FROM_HEADER] === 'registry')
            return declaredBodyHead(headers, 64 << 10, what, "the registry's answer");
          return errorTextHead(ERROR_TEXT_BYTES);
        },
      });
    } catch (err) {
      throw this.failure(err, signal, what);
    }
    return { status: res.statusCode, headers: res.headers, body: res.body.subarray(0, res.got) };
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}
