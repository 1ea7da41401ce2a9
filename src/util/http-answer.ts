// What an HTTP client's caller decides from an answer's head (src/util/raw-http.ts), and the answer it gets.
import { DfError } from '../errors.js';

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

/** An answer as src/util/raw-http.ts gives it. */
export interface HttpAnswer {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  /** The buffer the head chose, and how much of it the body filled. */
  body: Buffer;
  got: number;
}

/**
 * A connection closed or reset before any byte of its answer: on a kept-alive connection, maybe the host's
 * keep-alive ran out as the request went out (sent once more on a new one); on a new connection, the host's
 * answer (down, or a TLS server refusing this host's certificate, which closes after the handshake).
 */
export class ClosedBeforeAnswer extends DfError {
  constructor(
    what: string,
    readonly reused: boolean,
    cause?: Error,
  ) {
    super('NETWORK', `${what}: connection closed before an answer${cause ? ` (${cause.message})` : ''}`, {
      cause,
    });
  }
}
