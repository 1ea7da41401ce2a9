import { DfError } from '../errors.js';
import type { HttpAnswer } from './http-answer.js';

/** The parts of HTTP/1.1 answers that src/util/raw-http.ts parses itself. */

export type Headers = Record<string, string | string[] | undefined>;

export interface AnswerHead {
  status: number;
  /** Names in lower case; a repeated one as an array. */
  headers: Headers;
  /** HTTP/1.0, or Connection: close. */
  close: boolean;
}

/** Status line and headers of an answer's head; undefined when it is not HTTP/1.x. */
export function parseHead(text: string): AnswerHead | undefined {
  const lines = text.split('\r\n');
  const m = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0] ?? '');
  if (!m) return undefined;
  const headers: Headers = {};
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i]!;
    const c = line.indexOf(':');
    if (c <= 0) return undefined;
    const k = line.slice(0, c).trim().toLowerCase();
    const v = line.slice(c + 1).trim();
    const had = headers[k];
    headers[k] = had === undefined ? v : Array.isArray(had) ? [...had, v] : [had, v];
  }
  const connection = String(headers.connection ?? '').toLowerCase();
  return { status: Number(m[2]), headers, close: m[1] === '0' || connection.includes('close') };
}

/**
 * Decodes a chunked body from `raw` into `res.body` (as much as fits; res.got is set to that): done when
 * the last chunk (and its trailers) is in, `end` where it ended in `raw`.
 */
export function dechunk(raw: Buffer, res: HttpAnswer): { done: boolean; end: number } {
  let pos = 0;
  res.got = 0;
  for (;;) {
    const eol = raw.indexOf('\r\n', pos, 'latin1');
    if (eol < 0) return { done: false, end: pos };
    const size = parseInt(raw.toString('latin1', pos, eol).split(';')[0]!.trim(), 16);
    // not a chunk size: taken as the end (the connection is not kept: end is not the buffer's end)
    if (!(size >= 0)) return { done: true, end: pos };
    if (size === 0) {
      if (raw.toString('latin1', eol + 2, eol + 4) === '\r\n') return { done: true, end: eol + 4 };
      const t = raw.indexOf('\r\n\r\n', eol, 'latin1');
      return t < 0 ? { done: false, end: pos } : { done: true, end: t + 4 };
    }
    const data = raw.subarray(eol + 2, Math.min(eol + 2 + size, raw.length));
    res.got += data.copy(res.body, res.got);
    if (eol + 2 + size + 2 > raw.length) return { done: false, end: pos };
    pos = eol + 2 + size + 2;
  }
}

/** host:port, [v6]:port. */
export function splitAddress(address: string): { host: string; port: number } {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(address);
  if (!m) throw new DfError('CONFIG', `not a host:port address: ${address}`);
  return { host: m[1]!, port: Number(m[2]) };
}
