/**
 * The block server under hostile requests from a cluster member (it holds the token): real listener on
 * loopback, raw bytes on the wire. Every malformed request gets an error status, nothing is looked up or
 * allocated for a range over the limit, and the server still serves a good request afterwards.
 */
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { rawExchange, statusOf } from '../helpers/raw-http.js';

const TOKEN = 'hostile-test-token';
const DIGEST = 'sha256:' + 'cd'.repeat(32);
const DATA = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 13) & 0xff));
const MAX = 64 * 1024;

const reads: number[] = [];
const provider: BlobProvider = {
  get: vi.fn(async (digest: string) =>
    digest === DIGEST
      ? {
          size: DATA.length,
          read: async (o: number, l: number) => {
            reads.push(l);
            return DATA.subarray(o, o + l);
          },
        }
      : undefined,
  ),
};

const get = (path: string, headers: string[] = [`x-dfnode-cluster-token: ${TOKEN}`], method = 'GET') =>
  [`${method} ${path} HTTP/1.1`, 'Host: peer', 'Connection: close', ...headers, '', ''].join('\r\n');
const blob = (q: string) => `/blobs/${DIGEST}${q}`;

describe('block server: hostile requests', () => {
  let server: BlockServer;
  let port: number;
  let idle: Socket | undefined;

  beforeAll(async () => {
    server = new BlockServer({ provider, clusterToken: TOKEN, maxRangeBytes: MAX });
    const address = await server.listen('127.0.0.1:0');
    port = Number(address.slice(address.lastIndexOf(':') + 1));
  });
  afterAll(async () => {
    idle?.destroy();
    await server.close();
  });

  const cases: [string, string, number][] = [
    ['a protocol-relative path', get('//'), 404],
    ['a path with a host', get('//evil.example/blobs/x'), 404],
    ['a path without a digest', get('/blobs/'), 404],
    ['a bad percent escape', get('/%zz'), 404],
    ['a bad percent escape in the query', get(blob('?offset=%zz&length=1')), 400],
    ['a digest of the wrong form', get('/blobs/sha256:xyz?offset=0&length=1'), 404],
    ['no range', get(blob('')), 400],
    ['only an offset', get(blob('?offset=0')), 400],
    ['a negative offset', get(blob('?offset=-1&length=10')), 400],
    ['a NaN offset', get(blob('?offset=NaN&length=10')), 400],
    ['a fractional length', get(blob('?offset=0&length=1.5')), 400],
    ['a zero length', get(blob('?offset=0&length=0')), 400],
    ['a length in exponent form', get(blob('?offset=0&length=1e3')), 400],
    ['a huge length', get(blob('?offset=0&length=99999999999999999999999')), 400],
    ['an unsafe end', get(blob('?offset=9007199254740990&length=100')), 400],
    ['a length over the limit', get(blob(`?offset=0&length=${MAX + 1}`)), 413],
    ['a range beyond the blob', get(blob('?offset=4000&length=200')), 416],
    ['a reversed Range', get(blob(''), [`x-dfnode-cluster-token: ${TOKEN}`, 'Range: bytes=5-1']), 400],
    ['a Range of garbage', get(blob(''), [`x-dfnode-cluster-token: ${TOKEN}`, 'Range: bytes=a-b']), 400],
    ['an open Range', get(blob(''), [`x-dfnode-cluster-token: ${TOKEN}`, 'Range: bytes=0-']), 400],
    [
      'a Range over the limit',
      get(blob(''), [`x-dfnode-cluster-token: ${TOKEN}`, `Range: bytes=0-${10 * MAX}`]),
      413,
    ],
    [
      'a huge Range',
      get(blob(''), [`x-dfnode-cluster-token: ${TOKEN}`, 'Range: bytes=0-999999999999999999999']),
      400,
    ],
    ['no token', get(blob('?offset=0&length=1'), []), 401],
    ['a wrong token', get(blob('?offset=0&length=1'), ['x-dfnode-cluster-token: nope']), 401],
    ['POST', get(blob('?offset=0&length=1'), undefined, 'POST'), 405],
    ['DELETE', get('//', undefined, 'DELETE'), 405],
    ['huge headers', get(blob('?offset=0&length=1'), [`x-junk: ${'a'.repeat(64 * 1024)}`]), 431],
    ['a garbage request line', 'HELLO THERE\r\n\r\n', 400],
    ['binary garbage', '\x00\x01\x02\xff\r\n\r\n', 400],
  ];

  it.each(cases)('answers %s with an error status', async (_, bytes, status) => {
    expect(statusOf(await rawExchange(port, bytes))).toBe(status);
  });

  it('asks the provider nothing for a range over the limit', async () => {
    vi.mocked(provider.get).mockClear();
    expect(statusOf(await rawExchange(port, get(blob(`?offset=0&length=${2 ** 40}`))))).toBe(413);
    expect(provider.get).not.toHaveBeenCalled();
  });

  it('survives truncated requests and half-open connections, then serves a good request', async () => {
    // headers cut off, then the client half-closes
    await rawExchange(port, `GET ${blob('?offset=0&length=1')} HTTP/1.1\r\nHost: pe`);
    // a connection that stays open and silent while others are served
    idle = connect(port, '127.0.0.1');
    await new Promise((r) => idle!.once('connect', r));
    idle.write('GET / HTTP/1.1\r\n');
    // a request line, then nothing and the client goes away
    await rawExchange(port, 'GET /blobs/', { end: false, waitMs: 100 });

    const client = new HttpBlockClient(TOKEN);
    try {
      const got = await client.get(`127.0.0.1:${port}`, DIGEST, 100, 1000, AbortSignal.timeout(10_000));
      expect(got.equals(DATA.subarray(100, 1100))).toBe(true);
    } finally {
      await client.close();
    }
    const ranged = await rawExchange(
      port,
      get(blob(''), [`x-dfnode-cluster-token: ${TOKEN}`, 'Range: bytes=10-19']),
    );
    expect(statusOf(ranged)).toBe(206);
    expect(ranged).toMatch(/content-range: bytes 10-19\/4096/i);
    expect(reads.every((l) => l <= MAX)).toBe(true);
  });
});
