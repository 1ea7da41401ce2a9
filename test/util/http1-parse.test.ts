/**
 * The HTTP/1.1 pieces src/util/raw-http.ts parses itself: answer heads (status, headers, close) and chunked
 * error texts, including ones cut anywhere (not done yet) and hostile sizes.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { dechunk, parseHead, splitAddress } from '../../src/util/http1-parse.js';

const res = (n: number) => ({ statusCode: 409, headers: {}, body: Buffer.alloc(n), got: 0 });

describe('answer heads', () => {
  it('reads status, headers in lower case, repeats as arrays, and when the connection closes', () => {
    expect(parseHead('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2')).toEqual({
      status: 200,
      headers: { 'content-length': '5', 'x-a': ['1', '2'] },
      close: false,
    });
    expect(parseHead('HTTP/1.1 409 Conflict\r\nConnection: close')?.close).toBe(true);
    expect(parseHead('HTTP/1.0 200 OK')?.close).toBe(true);
    expect(parseHead('HTTP/1.1 204')?.status).toBe(204);
  });

  it('refuses what is not an HTTP/1.x head', () => {
    for (const t of ['HTTP/2 200 OK', 'SSH-2.0-OpenSSH', 'HTTP/1.1 20 OK', 'HTTP/1.1 200 OK\r\nno colon'])
      expect(parseHead(t), t).toBeUndefined();
  });

  it('splits host:port and [v6]:port', () => {
    expect(splitAddress('10.0.0.1:7000')).toEqual({ host: '10.0.0.1', port: 7000 });
    expect(splitAddress('[::1]:80')).toEqual({ host: '::1', port: 80 });
    expect(() => splitAddress('nohost')).toThrow(/host:port/);
  });
});

describe('chunked error texts', () => {
  const encode = (parts: string[]) =>
    parts.map((p) => `${p.length.toString(16)}\r\n${p}\r\n`).join('') + '0\r\n\r\n';

  it('decodes any split of a text into chunks, and is not done on any cut before the end', () => {
    fc.assert(
      fc.property(fc.array(fc.string({ minLength: 1, maxLength: 20 }), { maxLength: 6 }), (parts) => {
        const raw = Buffer.from(encode(parts), 'latin1');
        const r = res(1000);
        expect(dechunk(raw, r)).toEqual({ done: true, end: raw.length });
        expect(r.body.toString('latin1', 0, r.got)).toBe(parts.join(''));
        for (let cut = 0; cut < raw.length; cut++)
          expect(dechunk(raw.subarray(0, cut), res(1000)).done).toBe(false);
      }),
    );
  });

  it('keeps what fits the buffer, skips trailers, and ends at a size that is not one', () => {
    const r = res(4);
    expect(dechunk(Buffer.from('a\r\n0123456789\r\n0\r\n\r\n'), r).done).toBe(true);
    expect(r.body.toString()).toBe('0123');
    expect(dechunk(Buffer.from('0\r\nx-t: 1\r\n\r\n'), res(4))).toEqual({ done: true, end: 13 });
    expect(dechunk(Buffer.from('zz\r\n'), res(4))).toEqual({ done: true, end: 0 });
  });
});
