/**
 * The metrics endpoint under malformed requests (a local user may reach it): real listener on loopback,
 * raw bytes on the wire; each gets an error status and the endpoint still answers a scrape.
 */
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NodeMetrics } from '../../src/daemon/metrics.js';
import { rawExchange, statusOf } from '../helpers/raw-http.js';

const req = (line: string, headers: string[] = []) =>
  [line, 'Host: m', 'Connection: close', ...headers, '', ''].join('\r\n');

describe('metrics endpoint: hostile requests', () => {
  let server: Server;
  let port: number;

  beforeAll(async () => {
    server = await new NodeMetrics({ defaultMetrics: false }).serve('127.0.0.1:0');
    port = (server.address() as AddressInfo).port;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  it.each([
    ['a protocol-relative path', req('GET // HTTP/1.1'), 404],
    ['a bad escape', req('GET /%zz HTTP/1.1'), 404],
    ['another path', req('GET /metrics/../../etc/passwd HTTP/1.1'), 404],
    ['POST', req('POST /metrics HTTP/1.1', ['Content-Length: 3']) + 'abc', 405],
    ['huge headers', req('GET /metrics HTTP/1.1', [`x-junk: ${'a'.repeat(64 * 1024)}`]), 431],
    ['garbage', '\x00\xff\r\n\r\n', 400],
  ])('answers %s with an error status', async (_, bytes, status) => {
    expect(statusOf(await rawExchange(port, bytes))).toBe(status);
  });

  it('survives a truncated request and a silent connection, then serves a scrape', async () => {
    await rawExchange(port, 'GET /metr');
    await rawExchange(port, 'GET /metrics HTTP/1.1\r\n', { end: false, waitMs: 100 });
    const r = await rawExchange(port, req('GET /metrics?x=1 HTTP/1.1'));
    expect(statusOf(r)).toBe(200);
    expect(r).toMatch(/dfnode_mounts/);
  });
});
