import { DfError } from '../errors.js';

/** Largest token server answer read (the token, its lifetime, perhaps a refresh token). */
export const MAX_TOKEN_ANSWER = 1024 * 1024;
/** Longest token accepted: registry tokens are JWTs of a few KiB; anything far larger is not one. */
export const MAX_TOKEN_LENGTH = 64 * 1024;
/** Longest lifetime honoured (a day): a token server's `expires_in` of 1e999 must not pin a token forever. */
export const MAX_TOKEN_LIFETIME_S = 24 * 60 * 60;
/** Docker's default lifetime when the answer names none. */
const DEFAULT_LIFETIME_S = 60;
/** Visible ASCII only: the token goes into an Authorization header as it is. */
const TOKEN_CHARS = /^[\x21-\x7e]+$/;

export interface TokenAnswer {
  token: string;
  /** Seconds, within (0, MAX_TOKEN_LIFETIME_S]. */
  lifetimeS: number;
}

/**
 * Reads a token server's JSON answer (distribution token spec: `token` or OAuth2 `access_token`, optional
 * `expires_in`). Whatever the server sends, the result is a header-safe token and a bounded lifetime, or a
 * REGISTRY error that names the server.
 */
export function parseTokenResponse(text: string, server: string, what: string): TokenAnswer {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new DfError('REGISTRY', `token server ${server} sent an answer that is not JSON`, { cause: err });
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new DfError('REGISTRY', `token server ${server} sent JSON that is not an object for ${what}`);
  const o = parsed as Record<string, unknown>;
  const token = o.token || o.access_token;
  if (!token) throw new DfError('REGISTRY', `token server ${server} sent no token for ${what}`);
  if (typeof token !== 'string' || token.length > MAX_TOKEN_LENGTH || !TOKEN_CHARS.test(token))
    throw new DfError(
      'REGISTRY',
      `token server ${server} sent a token for ${what} that is not a string of at most ${MAX_TOKEN_LENGTH} visible ASCII characters`,
    );
  const e = o.expires_in;
  const lifetimeS = typeof e === 'number' && e > 0 ? Math.min(e, MAX_TOKEN_LIFETIME_S) : DEFAULT_LIFETIME_S;
  return { token, lifetimeS };
}
