import type { Dispatcher } from 'undici';
import { DfError } from '../errors.js';
import { parseHeaders } from './undici.js';

/** What a response's head decides: the buffer its body goes into, or an error that ends the request. */
export type HeadDecision = { into: Buffer; tooLong: (atLeast: number) => Error | undefined } | Error;

/** The decision for an error answer: the first `bytes` of its text, for the message; the rest dropped unread. */
export function errorTextHead(bytes: number): HeadDecision {
  return { into: Buffer.alloc(bytes), tooLong: () => undefined };
}

/**
 * The decision for an answer whose body must declare its length, at most `max` bytes (`noun`: what it is,
 * for the message): a buffer of exactly that length; a body longer than declared is cut off.
 */
export function declaredBodyHead(
  headers: Record<string, string | string[] | undefined>,
  max: number,
  what: string,
  noun: string,
): HeadDecision {
  const declared = Number(headers['content-length'] ?? NaN);
  if (!(declared >= 0 && declared <= max))
    return new DfError('NETWORK', `${what}: ${noun} must declare a length of at most ${max}`);
  return {
    into: Buffer.allocUnsafe(declared),
    tooLong: (atLeast) =>
      new DfError(
        'NETWORK',
        `${what}: more than the ${declared} bytes declared (at least ${atLeast}); cut off`,
      ),
  };
}

export interface DispatchedResponse {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  /** The buffer the head chose, and how much of it the body filled. */
  body: Buffer;
  got: number;
}

export interface DispatchIntoOptions {
  origin: string;
  path: string;
  /** Default GET. */
  method?: 'GET' | 'POST';
  /** A request body (POST). */
  body?: Buffer;
  headers: Record<string, string>;
  signal: AbortSignal;
  /**
   * Called with the status and headers: the buffer the body is copied into, and what a body longer than
   * that buffer is (an error that cuts the response off at once, or undefined: the rest is ignored and the
   * connection closed).
   */
  onHead: (statusCode: number, headers: Record<string, string | string[] | undefined>) => HeadDecision;
  /** Hears of every chunk: the buffer and how much of it is filled. A throw cuts the response off. */
  progress?: (data: Buffer, filled: number) => void;
}

/**
 * A request (a GET, or a POST of a small body) through `dispatcher` whose answer's body is copied straight
 * into one buffer as undici parses it: no Readable stream, no async iterator, no promise per chunk (on a
 * slow link a response comes in thousands of small chunks, and that machinery cost more CPU than the
 * bytes). The buffer is chosen when the head arrives (`onHead`); a body that goes past it is cut off as
 * soon as the first byte too many arrives.
 * Resolves when the body is complete (or was cut off without an error, see onHead); rejects with
 * undici's error, onHead's or progress's, or the signal's reason.
 */
export function dispatchInto(dispatcher: Dispatcher, opts: DispatchIntoOptions): Promise<DispatchedResponse> {
  return new Promise((resolve, reject) => {
    const { signal } = opts;
    let abort: ((err: Error) => void) | undefined;
    let settled = false;
    let res: DispatchedResponse | undefined;
    let tooLong: (atLeast: number) => Error | undefined = () => undefined;
    let cut = false;
    const onAbort = () => fail(signal.reason instanceof Error ? signal.reason : new Error('aborted'));
    const done = () => {
      settled = true;
      signal.removeEventListener('abort', onAbort);
    };
    const fail = (err: Error) => {
      if (settled) return;
      done();
      abort?.(err);
      reject(err);
    };
    /** Stops reading: the answer is whatever came so far (an error answer's text). */
    const cutOff = () => {
      if (settled || !res) return;
      cut = true;
      done();
      resolve(res);
      abort?.(new Error('response cut off: enough read'));
    };
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    const handler: Dispatcher.DispatchHandler = {
      onConnect(a) {
        if (settled) a(new Error('request already ended'));
        else abort = a;
      },
      onHeaders(statusCode, rawHeaders) {
        if (settled) return false;
        if (statusCode < 200) return true;
        const headers = parseHeaders(rawHeaders as Buffer[]) as Record<string, string | string[] | undefined>;
        let d: HeadDecision;
        try {
          d = opts.onHead(statusCode, headers);
        } catch (err) {
          d = err instanceof Error ? err : new Error(String(err));
        }
        if (d instanceof Error) {
          fail(d);
          return false;
        }
        res = { statusCode, headers, body: d.into, got: 0 };
        tooLong = d.tooLong;
        return true;
      },
      onData(chunk) {
        if (settled || !res) return false;
        const room = res.body.length - res.got;
        if (chunk.length > room) {
          const err = tooLong(res.got + chunk.length);
          if (err) {
            fail(err);
            return false;
          }
          res.body.set(chunk.subarray(0, room), res.got);
          res.got += room;
          cutOff();
          return false;
        }
        res.body.set(chunk, res.got);
        res.got += chunk.length;
        if (opts.progress) {
          try {
            opts.progress(res.body, res.got);
          } catch (err) {
            fail(err instanceof Error ? err : new Error(String(err)));
            return false;
          }
        }
        return true;
      },
      onComplete() {
        if (settled || cut) return;
        done();
        if (res) resolve(res);
        else reject(new Error('response ended without a head'));
      },
      onError(err) {
        if (settled) return;
        done();
        reject(err);
      },
    };
    try {
      dispatcher.dispatch(
        {
          origin: opts.origin,
          path: opts.path,
          method: opts.method ?? 'GET',
          headers: opts.headers,
          body: opts.body,
        },
        handler,
      );
    } catch (err) {
      fail(err instanceof Error ? err : new Error(String(err)));
    }
  });
}

/**
 * undici's error for a connection the other side closed or reset under a request: on a kept-alive
 * connection, as the request went out; worth one more try on a new connection when nothing was heard yet.
 */
export function staleConnection(err: unknown): boolean {
  const code = (err as { code?: string } | undefined)?.code;
  return code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' || code === 'EPIPE';
}
