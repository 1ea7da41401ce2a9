/**
 * The block server under a flood of connections, which needs no token: real listener on loopback, clients
 * bound to other loopback addresses (127.0.0.x) to stand for other hosts. Beyond p2p.maxConnectionsPerHost
 * from one address, or p2p.maxConnections in all, a connection is closed on arrival (counted, warned about once
 * per address), other hosts are still answered, and once the flood goes the server answers again; a flood of
 * thousands of idle connections from one address holds only its share (each costs the process ~9 KiB).
 */
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { pino } from 'pino';
import { NodeMetrics } from '../../src/daemon/metrics.js';
import { rawExchange, statusOf } from '../helpers/raw-http.js';

const TOKEN = 'flood-test-token';
const DIGEST = 'sha256:' + 'ab'.repeat(32);
const DATA = Buffer.alloc(4096, 7);
const provider: BlobProvider = {
  get: async (digest: string) =>
    digest === DIGEST
      ? { size: DATA.length, read: async (o: number, l: number) => DATA.subarray(o, o + l) }
      : undefined,
};
const request = [
  `GET /blobs/${DIGEST}?offset=0&length=16 HTTP/1.1`,
  'Host: peer',
  'Connection: close',
  `x-dfnode-cluster-token: ${TOKEN}`,
  '',
  '',
].join('\r\n');

/** A connection from `from` that the server kept (true) or closed on arrival (false). */
function open(port: number, from: string, sockets: Socket[]): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ port, host: '127.0.0.1', localAddress: from });
    sockets.push(s);
    s.on('error', () => resolve(false));
    s.on('close', () => resolve(false));
    // a connection the server keeps stays open; one it refused closes within moments
    s.on('connect', () => setTimeout(() => resolve(!s.destroyed && !s.readableEnded), 300));
  });
}

/** A whole request from `from` on a new connection: its status, or 0 when the connection was closed. */
async function statusFrom(port: number, from: string): Promise<number> {
  try {
    return statusOf(await rawExchange(port, request, { localAddress: from }));
  } catch {
    return 0;
  }
}

describe('block server: connection floods', () => {
  const sockets: Socket[] = [];
  let server: BlockServer | undefined;
  afterEach(async () => {
    for (const s of sockets.splice(0)) s.destroy();
    await server?.close();
    server = undefined;
  });

  const start = async (maxConnections: number, maxConnectionsPerHost: number) => {
    const warnings: string[] = [];
    server = new BlockServer({
      provider,
      clusterToken: TOKEN,
      maxConnections,
      maxConnectionsPerHost,
      logger: pino({ level: 'warn' }, { write: (l: string) => void warnings.push(JSON.parse(l).msg) }),
    });
    const address = await server.listen('127.0.0.1:0');
    return { port: Number(address.slice(address.lastIndexOf(':') + 1)), warnings };
  };

  it('one address gets maxConnectionsPerHost; the next is closed on arrival, other hosts are answered', async () => {
    const { port, warnings } = await start(64, 4);
    const kept = [];
    for (let i = 0; i < 6; i++) kept.push(await open(port, '127.0.0.2', sockets));
    expect(kept).toEqual([true, true, true, true, false, false]);
    expect(server!.counters.connectionsRefused).toBe(2);
    // warned once for that address, whatever the count
    expect(warnings.filter((w) => /maxConnectionsPerHost/.test(w))).toHaveLength(1);
    // another host is served meanwhile; the flooding one is not
    expect(await statusFrom(port, '127.0.0.3')).toBe(200);
    expect(await statusFrom(port, '127.0.0.2')).toBe(0);
    // its connections gone, it is served again
    for (const s of sockets.splice(0)) s.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect(await statusFrom(port, '127.0.0.2')).toBe(200);
  });

  it('maxConnections in all: beyond it every connection is closed on arrival until some close', async () => {
    const { port } = await start(6, 4);
    const kept = [];
    for (let i = 0; i < 6; i++) kept.push(await open(port, `127.0.0.${10 + i}`, sockets));
    expect(kept.every(Boolean)).toBe(true);
    expect(await open(port, '127.0.0.30', sockets)).toBe(false);
    expect(await statusFrom(port, '127.0.0.31')).toBe(0);
    expect(server!.counters.connectionsRefused).toBe(2);
    sockets.shift()!.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect(await statusFrom(port, '127.0.0.31')).toBe(200);
  });

  it('a flood of 3,000 idle connections from one address: 256 kept, the rest closed on arrival', async () => {
    const { port } = await start(4096, 256);
    const opened: Promise<boolean>[] = [];
    for (let i = 0; i < 3000; i++) {
      opened.push(open(port, '127.0.0.4', sockets));
      if (i % 200 === 199) await Promise.all(opened.slice(-200));
    }
    const kept = (await Promise.all(opened)).filter(Boolean).length;
    expect(kept).toBe(256);
    expect(server!.counters.connectionsRefused).toBe(3000 - 256);
    expect(await statusFrom(port, '127.0.0.5')).toBe(200);
  });

  it('refused connections are a metric', () => {
    const m = new NodeMetrics({ defaultMetrics: false });
    m.publishBlockServer({ served: 0, unauthorized: 0, connectionsRefused: 5 });
    m.publishBlockServer({ served: 0, unauthorized: 0, connectionsRefused: 7 });
    return m
      .text()
      .then((t) => expect(t).toMatch(/dfnode_peer_requests_total\{result="connection_refused"\} 7/));
  });
});
