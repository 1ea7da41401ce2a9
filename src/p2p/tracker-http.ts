import type { IncomingMessage, ServerResponse } from 'node:http';
import type { ServiceClientConstructor } from '@grpc/grpc-js';
import { DfError, type ErrorCode } from '../errors.js';
import { ClosedBeforeAnswer, declaredBodyHead, errorTextHead, type HttpAnswer } from '../util/http-answer.js';
import { RawHttpPool } from '../util/raw-http.js';
import { CLUSTER_TOKEN_HEADER } from './auth.js';
import { clientTlsOptions, tlsFailure, type TlsMaterial } from './tls.js';
import {
  answerAnnounce,
  callerHost,
  MAX_REQUEST_BYTES,
  Tracker,
  TrackerClient,
  trackerServiceConstructor,
} from './tracker-service.js';
import { trackerAddress } from './rendezvous.js';
import type { Logger } from '../log.js';
import type { AnnounceMsg, LookupMsg, TrackerState } from './tracker-state.js';

/**
 * The tracker over HTTP/1.1 on the seed's block server (the same port, token and TLS as its blocks):
 * `POST /tracker/v1/Announce` and `POST /tracker/v1/Lookup`, each with the gRPC method's request message
 * (proto/dfnode/tracker/v1/tracker.proto, protobuf-encoded) as its body and its response message as the
 * answer's body. Same messages, checks and limits as the gRPC tracker on the next port, for less CPU per
 * call (measured here: a gRPC call over HTTP/2 cost the node 0.65-0.85 ms and the seed 0.6 ms; over HTTP
 * 0.3 ms and 0.35-0.45 ms). A node makes several calls a second while it fills, and a seed answers every
 * node of its swarms.
 */
export const TRACKER_HTTP_PREFIX = '/tracker/v1/';

const CONTENT_TYPE = 'application/x-protobuf';

type Method = 'Announce' | 'Lookup';

/** Bytes of an error answer's text kept for the message. */
const ERROR_TEXT_BYTES = 300;

/** The largest answer a node accepts (as the gRPC client's receive limit). */
const MAX_ANSWER_BYTES = 8 << 20;

interface Codec {
  requestSerialize(v: unknown): Buffer;
  requestDeserialize(b: Buffer): unknown;
  responseSerialize(v: unknown): Buffer;
  responseDeserialize(b: Buffer): unknown;
}

let codecs: Record<Method, Codec> | undefined;

/** The gRPC service's own (de)serializers: the HTTP tracker speaks exactly its messages. */
function codec(method: Method): Codec {
  codecs ??= (trackerServiceConstructor() as ServiceClientConstructor).service as unknown as Record<
    Method,
    Codec
  >;
  return codecs[method];
}

/** An error's answer status; the client maps it back (answerError). */
function httpStatus(code: ErrorCode): number {
  if (code === 'INVALID_ARGUMENT') return 400;
  if (code === 'UNAUTHORIZED') return 401;
  if (code === 'FORBIDDEN') return 403;
  // tracker full: alive, asked again later
  if (code === 'NO_SPACE') return 503;
  return 500;
}

/** Bytes of tracker request bodies a block server holds while it reads them (a flood costs sockets, not memory). */
export class TrackerBodies {
  held = 0;
  constructor(readonly max = 64 * 1024 * 1024) {}
}

/**
 * Answers a tracker call on the block server (the caller checked the cluster token). The body is read up to
 * the gRPC tracker's request limit (413 beyond, before anything is buffered where a length is declared),
 * within `idleMs` (a body that stalls is dropped with 408) and within the server's `bodies` budget (503
 * beyond); a body that does not decode is 400.
 */

export async function handleTrackerPost(
  req: IncomingMessage,
  res: ServerResponse,
  state: TrackerState,
  idleMs: number,
  bodies: TrackerBodies,
): Promise<void> {
  const fail = (status: number, msg: string) => {
    if (res.headersSent) return void res.end();
    res.writeHead(status, {
      'content-type': 'text/plain',
      'content-length': Buffer.byteLength(msg),
      ...(status === 503 && { 'retry-after': '1' }),
    });
    res.end(msg);
  };
  const name = (req.url ?? '').split('?')[0]!.slice(TRACKER_HTTP_PREFIX.length);
  if (name === 'ping' && req.method === 'GET') {
    // HttpTracker.connect: opens the connection before the first call
    res.writeHead(204);
    res.end();
    return;
  }
  if (name !== 'Announce' && name !== 'Lookup') return fail(404, `no tracker method ${name.slice(0, 40)}`);
  if (req.method !== 'POST') {
    res.setHeader('allow', 'POST');
    return fail(405, `POST a ${name}Request message`);
  }
  const length = req.headers['content-length'];
  const declared = Number(length ?? 0);
  if (!(declared <= MAX_REQUEST_BYTES)) return tooLarge(req, fail);
  // what the body may take while it is read: its declared length, or the limit
  const reserve = length === undefined ? MAX_REQUEST_BYTES : declared;
  if (bodies.held + reserve > bodies.max) {
    // the answer goes out whole, then the connection closes (the body is not read)
    res.setHeader('connection', 'close');
    return fail(503, `busy: ${bodies.held} bytes of tracker requests are being read; retry later`);
  }
  bodies.held += reserve;
  let body: Awaited<ReturnType<typeof readBody>>;
  try {
    body = await readBody(req, idleMs);
  } finally {
    bodies.held -= reserve;
  }
  if (body === 'too large') return tooLarge(req, fail);
  if (body === 'stalled') {
    fail(408, `the request body made no progress for ${idleMs} ms`);
    req.destroy();
    return;
  }
  if (body === 'gone') return;
  const c = codec(name);
  let msg: unknown;
  try {
    msg = c.requestDeserialize(body);
  } catch (err) {
    return fail(400, `tracker: the body is not a ${name}Request message (${(err as Error).message})`);
  }
  let answer: Buffer;
  try {
    // host:port as gRPC's peer string (a bare IPv6 address would read as host:port)
    const { remoteAddress, remotePort } = req.socket;
    const source = remoteAddress ? callerHost(`${remoteAddress}:${remotePort ?? 0}`) : undefined;
    answer = c.responseSerialize(
      name === 'Announce'
        ? answerAnnounce(state, msg as AnnounceMsg, source)
        : state.lookup(msg as LookupMsg),
    );
  } catch (err) {
    const e = DfError.from(err);
    return fail(httpStatus(e.code), e.message);
  }
  res.writeHead(200, { 'content-type': CONTENT_TYPE, 'content-length': answer.length });
  res.end(answer);
}

function tooLarge(req: IncomingMessage, fail: (status: number, msg: string) => void): void {
  fail(413, `a tracker request is at most ${MAX_REQUEST_BYTES} bytes`);
  req.destroy();
}

/** The whole body, or why not (over MAX_REQUEST_BYTES, no byte for `idleMs`, the client went away). */
function readBody(req: IncomingMessage, idleMs: number): Promise<Buffer | 'too large' | 'stalled' | 'gone'> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let n = 0;
    let timer = setTimeout(() => end('stalled'), idleMs);
    const end = (r: Buffer | 'too large' | 'stalled' | 'gone') => {
      clearTimeout(timer);
      req.off('data', onData).off('end', onEnd).off('error', onGone).off('close', onGone);
      resolve(r);
    };
    const onData = (c: Buffer) => {
      n += c.length;
      if (n > MAX_REQUEST_BYTES) return end('too large');
      chunks.push(c);
      clearTimeout(timer);
      timer = setTimeout(() => end('stalled'), idleMs);
    };
    const onEnd = () => end(chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, n));
    const onGone = () => end('gone');
    req.on('data', onData).on('end', onEnd).on('error', onGone).on('close', onGone);
  });
}

/** A tracker answer's status as the node's error (see httpStatus). */
function answerError(what: string, status: number, text: string): DfError {
  const failure = `${what}: ${text || `HTTP ${status}`}`;
  if (status === 401) return new DfError('UNAUTHORIZED', `${failure} (check p2p.clusterToken)`);
  if (status === 400) return DfError.invalidArgument(failure);
  if (status === 403) return new DfError('FORBIDDEN', failure);
  if (status === 503) return new DfError('NO_SPACE', failure);
  return new DfError('NETWORK', `${what}: HTTP ${status} ${text}`);
}

/**
 * The tracker of one seed, over HTTP on its block address; a seed that has no HTTP tracker (404 or 405: an
 * older version) is asked over gRPC on the next port from then on (`fallback`). Every call has a deadline
 * and carries the cluster token; with `tls`, HTTPS with this host's certificate. Errors as the gRPC client's:
 * UNAUTHORIZED, TIMEOUT (no answer in time: a busy seed), NETWORK and the tracker's own (INVALID_ARGUMENT,
 * FORBIDDEN, NO_SPACE).
 */
export class HttpTracker extends Tracker {
  private readonly pool: RawHttpPool;
  private grpc: Tracker | undefined;

  constructor(
    /** The seed's block server, host:port. */
    readonly address: string,
    private readonly clusterToken: string,
    private readonly timeoutMs: number,
    private readonly tls: TlsMaterial | undefined,
    /** The same seed's gRPC tracker, made when the seed turns out to have no HTTP one. */
    private readonly fallback: () => Tracker,
  ) {
    super();
    // apart from the block client's: a call never waits behind a block response for a connection
    this.pool = new RawHttpPool({
      ...(tls && { tls: clientTlsOptions(tls) }),
      connectTimeoutMs: timeoutMs,
      maxPerHost: 2,
      idleMs: 30_000,
      lowat: false,
    });
  }

  /** Over gRPC (the seed predates the HTTP tracker). */
  get legacy(): boolean {
    return this.grpc !== undefined;
  }

  /**
   * Opens the connection now (a `GET /tracker/v1/ping`; returns at once, errors are for the next call), so
   * that the first announce and lookup of a blob, which its fill waits for, find it open.
   */
  connect(): void {
    if (this.grpc) return this.grpc.connect();
    void this.pool
      .request(this.address, {
        path: TRACKER_HTTP_PREFIX + 'ping',
        headers: { [CLUSTER_TOKEN_HEADER]: this.clusterToken },
        signal: AbortSignal.timeout(this.timeoutMs),
        onHead: () => errorTextHead(ERROR_TEXT_BYTES),
      })
      .catch(() => undefined);
  }

  protected async call<Res>(method: Method, req: object, signal?: AbortSignal): Promise<Res> {
    if (this.grpc)
      return (
        method === 'Announce' ? this.grpc.announce(req, signal) : this.grpc.lookup(req, signal)
      ) as Promise<Res>;
    const what = `tracker ${this.address} ${method}`;
    const c = codec(method);
    // the deadline and the caller's signal, without AbortSignal.any (which Node 20 keeps alive as long as
    // a long-lived caller signal)
    const ac = new AbortController();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      ac.abort(DfError.timeout(`${what}: no answer within ${this.timeoutMs} ms`));
    }, this.timeoutMs);
    const onAbort = () => ac.abort(signal!.reason);
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    const body = c.requestSerialize(req);
    let res: HttpAnswer;
    try {
      // a kept-alive connection the seed closed as the call went out is tried once more on a new one (a
      // seed that is down refuses that one, and only then counts as down): src/util/raw-http.ts
      res = await this.pool.request(this.address, {
        path: TRACKER_HTTP_PREFIX + method,
        method: 'POST',
        body,
        headers: { [CLUSTER_TOKEN_HEADER]: this.clusterToken, 'content-type': CONTENT_TYPE },
        signal: ac.signal,
        onHead: (status, headers) => {
          if (status !== 200) return errorTextHead(ERROR_TEXT_BYTES);
          return declaredBodyHead(headers, MAX_ANSWER_BYTES, what, 'an answer');
        },
      });
    } catch (err) {
      if (timedOut || signal?.aborted) throw DfError.from(ac.signal.reason);
      if (this.tls) {
        const e = tlsFailure(this.address, err);
        if (e) throw e;
      }
      if (err instanceof ClosedBeforeAnswer)
        throw new DfError('NETWORK', `${what}: ${err.message}`, { cause: err });
      if (err instanceof DfError) throw err;
      throw new DfError('NETWORK', `${what}: ${(err as Error).message}`, { cause: err });
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    }
    if (res.statusCode === 404 || res.statusCode === 405) {
      // a seed without the HTTP tracker answers its block server's 404 or 405
      this.grpc ??= this.fallback();
      return this.call(method, req, signal);
    }
    if (res.statusCode !== 200)
      throw answerError(what, res.statusCode, res.body.subarray(0, res.got).toString('utf8'));
    if (res.got !== res.body.length)
      throw new DfError('NETWORK', `${what}: got ${res.got} of ${res.body.length} bytes`);
    try {
      return c.responseDeserialize(res.body) as Res;
    } catch (err) {
      throw new DfError(
        'NETWORK',
        `${what}: the answer is not a ${method}Response (${(err as Error).message})`,
      );
    }
  }

  close(): void {
    this.grpc?.close();
    void this.pool.close();
  }
}

/**
 * The client of `seed`'s tracker: over HTTP on its block port; over gRPC on the next port for a seed
 * without it (or with DFNODE_TRACKER_GRPC=1: a way around a proxy that mangles it, and for comparisons).
 */
export function trackerOf(
  seed: string,
  token: string,
  timeoutMs: number,
  tls: TlsMaterial | undefined,
  log: Logger,
): Tracker {
  const grpc = () => new TrackerClient(trackerAddress(seed), token, timeoutMs, tls);
  if (process.env.DFNODE_TRACKER_GRPC === '1') return grpc();
  return new HttpTracker(seed, token, timeoutMs, tls, () => {
    log.info({ seed }, 'p2p: the seed has no HTTP tracker; asking its gRPC tracker');
    return grpc();
  });
}
