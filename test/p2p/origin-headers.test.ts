/**
 * The origin headers a node gives the file's seed with a piece table request (src/p2p/origin-headers.ts),
 * as a member with the token could craft them: the seed takes only a bounded list of header-safe pairs and
 * never lets a node set the request's framing or routing; a bad value gets 400 before anything is fetched.
 */
import { describe, expect, it } from 'vitest';
import { BlockServer } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import {
  decodeOriginHeaders,
  encodeOriginHeaders,
  ORIGIN_HEADERS_HEADER,
} from '../../src/p2p/origin-headers.js';
import { rawExchange, statusOf } from '../helpers/raw-http.js';

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64');

describe('origin headers for a seed', () => {
  it('round-trips header-safe pairs, names lower-cased; none is no header at all', () => {
    const h = { Authorization: 'Bearer a,b; c=d', 'X-Api-Key': 'k' };
    expect(decodeOriginHeaders(encodeOriginHeaders(h))).toEqual({
      authorization: 'Bearer a,b; c=d',
      'x-api-key': 'k',
    });
    expect(encodeOriginHeaders({})).toBeUndefined();
    expect(decodeOriginHeaders(undefined)).toEqual({});
  });

  it.each([
    ['not base64 of JSON', '%%%'],
    ['not a list', b64({ a: 'b' })],
    ['a pair of the wrong shape', b64([['a']])],
    ['a non-string value', b64([['a', 1]])],
    ['a bad name', b64([['a b', 'c']])],
    ['a line break', b64([['x-a', 'v\r\nHost: evil']])],
    ['Host', b64([['Host', 'evil.example']])],
    ['Range', b64([['range', 'bytes=0-']])],
    ['Transfer-Encoding', b64([['transfer-encoding', 'chunked']])],
    ['too many pairs', b64(Array.from({ length: 65 }, (_, i) => [`x-${i}`, 'v']))],
    ['too long', 'A'.repeat(17 * 1024)],
    ['repeated', ['a', 'b']],
  ])('refuses %s', (_, v) => {
    expect(() => decodeOriginHeaders(v)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });

  it("reach the seed's file table as sent; a bad value is answered 400 before the table is asked for", async () => {
    const seen: Record<string, string>[] = [];
    const server = new BlockServer({
      provider: { get: () => Promise.resolve(undefined) },
      clusterToken: 't',
      fileTable: (_q, _signal, origin) => {
        seen.push(origin);
        return Promise.resolve(Buffer.from('{}'));
      },
    });
    const addr = await server.listen('127.0.0.1:0');
    const client = new HttpBlockClient('t');
    try {
      const signal = AbortSignal.timeout(5_000);
      await client.fileTable(addr, { url: 'http://o/f' }, 1024, signal, { authorization: 'Bearer x' });
      await client.fileTable(addr, { url: 'http://o/f' }, 1024, signal);
      expect(seen).toEqual([{ authorization: 'Bearer x' }, {}]);
      const port = Number(addr.slice(addr.lastIndexOf(':') + 1));
      const bad = [
        'GET /files/table?url=http://o/f HTTP/1.1',
        'Host: seed',
        'Connection: close',
        'x-dfnode-cluster-token: t',
        `${ORIGIN_HEADERS_HEADER}: ${b64([['host', 'evil']])}`,
        '',
        '',
      ].join('\r\n');
      expect(statusOf(await rawExchange(port, bad))).toBe(400);
      expect(seen.length).toBe(2);
    } finally {
      await client.close();
      await server.close();
    }
  });
});
