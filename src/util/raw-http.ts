import { isIP, connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type ConnectionOptions } from 'node:tls';
import { DfError } from '../errors.js';
import { ClosedBeforeAnswer, type HttpAnswer, type HeadDecision } from './http-answer.js';
import { dechunk, parseHead, splitAddress, type AnswerHead } from './http1-parse.js';
import { markRemaining } from './rcv-lowat.js';

/**
 * A small HTTP/1.1 client for the P2P tier (the block client's range GETs, the tracker's POSTs): answers'
 * bodies are read by the kernel straight into the caller's buffer (`onread` with a buffer per read), over a
 * pool of kept-alive connections per host.
 *
 * Why not undici: on a slow link a 1 MiB answer comes in hundreds of reads, and undici's path per read (a
 * socket stream, its llhttp parser in WebAssembly, a copy into our buffer) was a quarter of a swarm node's CPU
 * (bench/README.md, dataplane). Here a read of the body is one JavaScript call, with no copy and no parser:
 * only the head is parsed, in JavaScript, from a small scratch buffer.
 *
 * What it takes of HTTP: a 2xx answer must declare its length (Content-Length, no chunked body: dfnode's block
 * server and tracker always do; 204 and 304 have none); any other answer's text is read up to what the head
 * decision asks for, and the connection is kept when the answer declared a length of at most DRAIN_MAX or came
 * in chunks that fit the scratch buffer (else closed). No pipelining: one request per connection at a time.
 */
/** Bytes of an answer's head at most (status line and headers). */
const HEAD_MAX = 16 * 1024;
/** An error answer's body of at most this many bytes is read to its end, keeping the connection. */
const DRAIN_MAX = 64 * 1024;

export interface RawHttpOptions {
  /** HTTPS with these options (the client certificate, CA). */
  tls?: ConnectionOptions;
  connectTimeoutMs: number;
  /** Connections to one host at most; more requests wait for one. */
  maxPerHost: number;
  /** A connection idle this long is closed (ms; or a second before the host's Keep-Alive timeout). */
  idleMs: number;
  /** Set SO_RCVLOWAT to the body bytes still to come (plain TCP only: src/util/rcv-lowat.ts). */
  lowat: boolean;
}

export interface RawRequest {
  /** Default GET. */
  method?: 'GET' | 'POST';
  /** A request body (POST), sent with its length. */
  body?: Buffer;
  path: string;
  headers: Record<string, string>;
  signal: AbortSignal;
  /** The buffer the body goes into, or an error that ends the request. */
  onHead: (statusCode: number, headers: Record<string, string | string[] | undefined>) => HeadDecision;
  /** Hears of every read of the body: the buffer and how much of it is filled. A throw ends the request. */
  progress?: (data: Buffer, filled: number) => void;
  /** How long SO_RCVLOWAT may hold body bytes back, asked per read (ms; default FALLBACK_MS: rcv-lowat.ts). */
  holdMs?: () => number;
  /** Given, when the request goes out, how to hand over body bytes held back at once (the mark back to 1). */
  onHurry?: (hurry: () => void) => void;
}

/** What one request in flight on a connection has of its answer. */
interface Active {
  req: RawRequest;
  resolve: (r: HttpAnswer) => void;
  reject: (e: Error) => void;
  settled: boolean;
  /** Whether its connection served a request before. */
  reused: boolean;
  res?: HttpAnswer;
  /** Where the body ends in res.body: its declared length or the buffer's, whichever is less. */
  limit: number;
  /** Bytes of the declared body past the limit, read and dropped before the connection is reused. */
  drain: number;
  /** An error answer in chunks: gathered in the scratch buffer whole, then decoded. */
  chunked: boolean;
  keepAlive: boolean;
}

/** One connection: one request at a time; the body of an answer read straight into the request's buffer. */
class Conn {
  readonly socket: Socket;
  private readonly scratch = Buffer.allocUnsafe(HEAD_MAX);
  /** Bytes of an answer's head in the scratch buffer so far. */
  private headLen = 0;
  private cur?: Active;
  /** The head of the answer in flight is parsed: reads go into its body. */
  private inBody = false;
  private served = 0;
  private idleTimer?: ReturnType<typeof setTimeout>;
  private connectTimer?: ReturnType<typeof setTimeout>;
  /** The host's keep-alive time (its Keep-Alive header), less a second, if lower than ours (ms). */
  private hostIdleMs = Infinity;
  private gone = false;
  private connected = false;
  /** The request, until a TLS connection's handshake is done. */
  private unsent?: Buffer;

  constructor(
    readonly address: string,
    private readonly pool: RawHttpPool,
    private readonly opts: RawHttpOptions,
  ) {
    const { host, port } = splitAddress(address);
    const onread = { buffer: () => this.nextBuffer(), callback: (n: number) => this.onRead(n) };
    this.socket = opts.tls
      ? // onread is a TLS socket's option too (Node ≥ 15), missing from @types/node's ConnectionOptions
        tlsConnect({
          servername: isIP(host) ? undefined : host,
          ...opts.tls,
          host,
          port,
          onread,
        } as ConnectionOptions)
      : netConnect({ host, port, onread, noDelay: true });
    // requests go out at once (one write each), also under TLS
    this.socket.setNoDelay(true);
    this.connectTimer = setTimeout(() => {
      this.fail(new DfError('NETWORK', `${address}: no connection within ${opts.connectTimeoutMs} ms`));
    }, opts.connectTimeoutMs);
    this.socket.once(opts.tls ? 'secureConnect' : 'connect', () => {
      clearTimeout(this.connectTimer);
      this.connected = true;
      // a TLS request waits for the handshake: written before, a refusal is a write error, not TLS's
      if (this.unsent) this.socket.write(this.unsent);
      this.unsent = undefined;
    });
    this.socket.on('error', (err) => this.close(err));
    this.socket.on('close', () => this.close());
  }

  /** Sends a request on this connection (new, or idle in the pool). */
  send(a: Active): void {
    clearTimeout(this.idleTimer);
    this.socket.ref();
    this.cur = a;
    this.inBody = false;
    this.headLen = 0;
    a.reused = this.served > 0;
    const { req } = a;
    // a reader waits on the body now: what the low-water mark holds back comes at once
    req.onHurry?.(() => this.cur === a && this.opts.lowat && markRemaining(this.socket, 0));
    let head = `${req.method ?? 'GET'} ${req.path} HTTP/1.1\r\nhost: ${this.address}\r\n`;
    for (const [k, v] of Object.entries(req.headers)) head += `${k}: ${v}\r\n`;
    if (req.body) head += `content-length: ${req.body.length}\r\n`;
    const bytes = Buffer.from(head + '\r\n', 'latin1');
    const out = req.body ? Buffer.concat([bytes, req.body]) : bytes;
    if (this.opts.tls && !this.connected) this.unsent = out;
    else this.socket.write(out);
  }

  /** The buffer the next read goes into: the rest of the body while one is read, else the scratch buffer. */
  private nextBuffer(): Buffer {
    const a = this.cur;
    if (this.inBody && a?.res && !a.chunked) {
      const { res } = a;
      if (res.got < a.limit) {
        if (this.opts.lowat) markRemaining(this.socket, a.limit - res.got, a.req.holdMs?.());
        return res.body.subarray(res.got, a.limit);
      }
      if (a.drain > 0) return this.scratch.subarray(0, Math.min(a.drain, HEAD_MAX));
    }
    // between bodies the mark is 1: a head (or a short answer) must not wait for bytes that will not come
    if (this.opts.lowat && this.socket) markRemaining(this.socket, 0);
    // a read never gets an empty buffer (libuv fails it with ENOBUFS): a full head is refused before
    return this.scratch.subarray(Math.min(this.headLen, HEAD_MAX - 1));
  }

  private onRead(n: number): boolean {
    const a = this.cur;
    if (!a) {
      // bytes nobody asked for (between requests): not a host that speaks this protocol
      this.destroy();
      return false;
    }
    if (!this.inBody || a.chunked) {
      this.headLen += n;
      return this.inBody ? this.onChunkedBytes(a) : this.onHeadBytes(a);
    }
    const res = a.res!;
    if (res.got < a.limit) {
      res.got += n;
      if (!this.told(a)) return false;
    } else a.drain -= n;
    this.maybeDone(a);
    return true;
  }

  /** Tells the request of body bytes; false when its progress callback threw (the request failed). */
  private told(a: Active): boolean {
    if (!a.req.progress || a.settled) return true;
    try {
      a.req.progress(a.res!.body, a.res!.got);
      return true;
    } catch (err) {
      this.fail(err instanceof Error ? err : new Error(String(err)));
      return false;
    }
  }

  private onHeadBytes(a: Active): boolean {
    const s = this.scratch;
    for (;;) {
      const end = s.subarray(0, this.headLen).indexOf('\r\n\r\n', 0, 'latin1');
      if (end < 0) {
        if (this.headLen < HEAD_MAX - 1) return true;
        this.fail(new DfError('NETWORK', `${this.address}: an answer's head over ${HEAD_MAX} bytes`));
        return false;
      }
      const head = parseHead(s.toString('latin1', 0, end));
      if (!head) {
        this.fail(new DfError('NETWORK', `${this.address}: not an HTTP/1.1 answer`));
        return false;
      }
      const at = end + 4;
      const rest = this.headLen - at;
      if (head.status < 200) {
        // an interim answer: the real one follows
        s.copy(s, 0, at, this.headLen);
        this.headLen = rest;
        continue;
      }
      if (!this.startBody(a, head)) return false;
      if (a.chunked) {
        s.copy(s, 0, at, this.headLen);
        this.headLen = rest;
        this.inBody = true;
        return this.onChunkedBytes(a);
      }
      const res = a.res!;
      // body bytes that came in the same read as the head
      const take = Math.min(rest, a.limit);
      s.copy(res.body, 0, at, at + take);
      res.got = take;
      const dropped = Math.min(a.drain, rest - take);
      a.drain -= dropped;
      // more than the answer: a host sending what nobody asked for
      if (rest > take + dropped) a.keepAlive = false;
      this.headLen = 0;
      this.inBody = true;
      if (take > 0 && !this.told(a)) return false;
      this.maybeDone(a);
      return true;
    }
  }

  /**
   * An error answer's body in chunks (what Node's server sends for a text without a declared length): the
   * whole of it in the scratch buffer, then its text decoded into the answer's buffer. A body larger than
   * the scratch buffer: what it holds, and the connection closed.
   */
  private onChunkedBytes(a: Active): boolean {
    const { done, end } = dechunk(this.scratch.subarray(0, this.headLen), a.res!);
    if (!done && this.headLen < HEAD_MAX - 1) return true;
    a.keepAlive &&= done && end === this.headLen;
    a.limit = a.res!.got;
    a.drain = 0;
    this.headLen = 0;
    this.maybeDone(a);
    return true;
  }

  /** Decides on the answer's body from its head; false when the request failed. */
  private startBody(a: Active, head: AnswerHead): boolean {
    let d: HeadDecision;
    try {
      d = a.req.onHead(head.status, head.headers);
    } catch (err) {
      d = err instanceof Error ? err : new Error(String(err));
    }
    if (d instanceof Error) {
      this.fail(d);
      return false;
    }
    const cl = head.headers['content-length'];
    const chunked =
      head.headers['transfer-encoding'] !== undefined && head.status !== 204 && head.status !== 304;
    // 204 and 304 have no body, whatever their head says
    const declared =
      head.status === 204 || head.status === 304
        ? 0
        : !chunked && typeof cl === 'string' && /^\d{1,15}$/.test(cl.trim())
          ? Number(cl)
          : undefined;
    if (head.status < 300) {
      if (declared === undefined) {
        this.fail(new DfError('NETWORK', `${this.address}: the answer does not declare its length`));
        return false;
      }
      const err = declared > d.into.length ? d.tooLong(declared) : undefined;
      if (err) {
        this.fail(err);
        return false;
      }
    }
    a.res = { statusCode: head.status, headers: head.headers, body: d.into, got: 0 };
    a.chunked = chunked;
    a.limit = Math.min(d.into.length, declared ?? Infinity);
    a.drain = declared === undefined ? 0 : declared - a.limit;
    // an answer of unknown length, or one with much to drop, is not worth the connection
    a.keepAlive = !head.close && (declared !== undefined || chunked) && a.drain <= DRAIN_MAX;
    const ka = /\btimeout=(\d+)/.exec(String(head.headers['keep-alive'] ?? ''));
    if (ka) this.hostIdleMs = Math.max(500, Number(ka[1]) * 1000 - 1000);
    return true;
  }

  /** The answer is complete when its body is; the connection goes back once the rest is dropped. */
  private maybeDone(a: Active): void {
    const res = a.res!;
    if (res.got < a.limit) return;
    this.settle(a)?.resolve(res);
    if (!a.keepAlive) return this.destroy();
    if (a.drain > 0) return;
    this.cur = undefined;
    this.inBody = false;
    this.headLen = 0;
    this.served++;
    this.pool.release(this);
  }

  /** Marks the request settled; the request if it was not before. */
  private settle(a: Active): Active | undefined {
    if (a.settled) return undefined;
    a.settled = true;
    return a;
  }

  /** Idle in the pool: closed after the keep-alive time. */
  idle(): void {
    this.idleTimer = setTimeout(() => this.destroy(), Math.min(this.opts.idleMs, this.hostIdleMs));
    this.idleTimer.unref();
    // an idle kept-alive connection does not keep the process alive (a CLI that forgot close())
    this.socket.unref();
  }

  /** Ends the request in flight with `err` and closes the connection (it is mid-answer). */
  fail(err: Error): void {
    const a = this.cur;
    if (a) this.settle(a)?.reject(err);
    this.destroy();
  }

  destroy(): void {
    if (!this.socket.destroyed) this.socket.destroy();
    this.close();
  }

  /** The socket is gone (or going): the request in flight ends with what it had. */
  private close(err?: Error): void {
    clearTimeout(this.idleTimer);
    clearTimeout(this.connectTimer);
    const a = this.cur;
    this.cur = undefined;
    if (a && this.settle(a)) {
      // a body cut short, or an error answer read to the close: the caller counts the bytes
      if (this.inBody) a.resolve(a.res!);
      else a.reject(new ClosedBeforeAnswer(this.address, a.reused && this.headLen === 0, err));
    }
    if (this.gone) return;
    this.gone = true;
    this.pool.gone(this);
  }
}

/** What a request to a closed pool, or one still waiting when it closes, fails with. */
const CLOSED_POOL = 'the HTTP client is closed';

interface Waiting {
  address: string;
  a: Active;
  /** Take a new connection (the retry of a request closed on a reused one). */
  fresh: boolean;
  /** Sends the request on a connection. */
  start: (c: Conn) => void;
}

/** Connections per host, idle ones reused newest first, requests over the limit queued in order. */
export class RawHttpPool {
  private readonly conns = new Map<string, Set<Conn>>();
  private readonly idle = new Map<string, Conn[]>();
  private readonly queue: Waiting[] = [];
  private closed = false;

  constructor(private readonly opts: RawHttpOptions) {}

  /**
   * One request (a GET, or a POST of a small body). Resolves with the answer (a 2xx body may be short when the connection closed: compare `got`);
   * rejects with onHead's or progress's error, a DfError, or the signal's reason. A request whose kept-alive
   * connection closed before any answer is sent once more on a new connection.
   */
  async request(address: string, req: RawRequest): Promise<HttpAnswer> {
    try {
      return await this.once(address, req, false);
    } catch (err) {
      if (!(err instanceof ClosedBeforeAnswer) || !err.reused || req.signal.aborted) throw err;
      return this.once(address, req, true);
    }
  }

  private once(address: string, req: RawRequest, fresh: boolean): Promise<HttpAnswer> {
    return new Promise((resolve, reject) => {
      const { signal } = req;
      if (signal.aborted) return reject(reason(signal));
      if (this.closed) return reject(new DfError('ABORTED', CLOSED_POOL));
      let conn: Conn | undefined;
      const onAbort = () => {
        if (a.settled) return;
        const w = this.queue.findIndex((q) => q.a === a);
        if (w >= 0) this.queue.splice(w, 1);
        a.settled = true;
        reject(reason(signal));
        // mid-answer: the connection cannot be reused
        conn?.destroy();
      };
      const a: Active = {
        req,
        settled: false,
        reused: false,
        limit: 0,
        drain: 0,
        chunked: false,
        keepAlive: false,
        resolve: (r) => {
          signal.removeEventListener('abort', onAbort);
          resolve(r);
        },
        reject: (e) => {
          signal.removeEventListener('abort', onAbort);
          reject(e);
        },
      };
      signal.addEventListener('abort', onAbort, { once: true });
      const start = (c: Conn) => {
        conn = c;
        c.send(a);
      };
      this.dispatch({ address, a, fresh, start });
    });
  }

  /** Sends a request on an idle connection, a new one, or queues it. */
  private dispatch(w: Waiting): void {
    const idle = this.idle.get(w.address);
    if (!w.fresh && idle?.length) return w.start(idle.pop()!);
    const set = this.conns.get(w.address) ?? new Set<Conn>();
    if (set.size >= this.opts.maxPerHost) {
      // at the limit: an idle connection makes room for the new one, else the request waits its turn
      const spare = idle?.pop();
      if (!spare) return void this.queue.push(w);
      spare.destroy();
    }
    const c = new Conn(w.address, this, this.opts);
    set.add(c);
    this.conns.set(w.address, set);
    w.start(c);
  }

  /** A connection is done with its request and can take another. */
  release(c: Conn): void {
    const i = this.queue.findIndex((q) => q.address === c.address);
    if (i >= 0) {
      const w = this.queue[i]!;
      // a retry waits for a new connection: this one makes room for it (gone() sends it)
      if (w.fresh) return c.destroy();
      this.queue.splice(i, 1);
      return w.start(c);
    }
    const idle = this.idle.get(c.address) ?? [];
    idle.push(c);
    this.idle.set(c.address, idle);
    c.idle();
  }

  /** A connection closed: out of the pool; a request waiting for a place at its host takes it. */
  gone(c: Conn): void {
    this.conns.get(c.address)?.delete(c);
    if (this.conns.get(c.address)?.size === 0) this.conns.delete(c.address);
    const idle = this.idle.get(c.address);
    const j = idle?.indexOf(c) ?? -1;
    if (j >= 0) idle!.splice(j, 1);
    if (idle?.length === 0) this.idle.delete(c.address);
    const i = this.queue.findIndex((q) => q.address === c.address);
    if (i >= 0) this.dispatch(this.queue.splice(i, 1)[0]!);
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const w of this.queue.splice(0)) {
      w.a.settled = true;
      w.a.reject(new DfError('ABORTED', CLOSED_POOL));
    }
    for (const set of [...this.conns.values()]) for (const c of [...set]) c.destroy();
  }
}

function reason(signal: AbortSignal): Error {
  return signal.reason instanceof Error ? signal.reason : new DfError('ABORTED', 'aborted');
}
