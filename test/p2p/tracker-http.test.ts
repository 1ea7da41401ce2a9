/**
 * The tracker over HTTP on the seed's block server (src/p2p/tracker-http.ts): the same answers as the gRPC
 * tracker, the token, the fallback to gRPC for a seed without it, time limits, and hostile requests (too
 * large, garbage, stalled, wrong method) answered without harm. Real servers on loopback.
 */
import { request as httpRequest } from 'node:http';
import { connect as netConnect, createConnection, createServer, type Server, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadConfig } from '../../src/config.js';
import { NodeMetrics } from '../../src/daemon/metrics.js';
import { BlockServer } from '../../src/p2p/block-server.js';
import { Seed } from '../../src/p2p/seed.js';
import { PieceLayout } from '../../src/mirror/piece-table.js';
import type { RegistryClient } from '../../src/registry/client.js';
import { tempDir } from '../helpers/temp.js';
import { listenPair, trackerAddress } from '../../src/p2p/rendezvous.js';
import { HttpTracker } from '../../src/p2p/tracker-http.js';
import { callerHost, serveTracker, TrackerClient, type Tracker } from '../../src/p2p/tracker-service.js';
import { TrackerState } from '../../src/p2p/tracker-state.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';
import { joinWithUnit, startNode } from './swarm-node.js';

const TOKEN = 'tracker-http-token';
const BLOB = 'sha256:' + '3c'.repeat(32);
const cleanups = cleanupsAfterEach();

const noFallback = (): Tracker => {
  throw new Error('the HTTP tracker fell back to gRPC');
};

/** A seed's block server with the HTTP tracker (and, beside it, the gRPC tracker on the same state). */
async function seedServer(
  state = new TrackerState(),
  requestTimeoutMs = 30_000,
  maxTrackerBodyBytes?: number,
) {
  const server = new BlockServer({
    provider: { get: async () => undefined },
    clusterToken: TOKEN,
    tracker: state,
    requestTimeoutMs,
    maxTrackerBodyBytes,
  });
  const address = await server.listen('127.0.0.1:0');
  cleanups.push(() => server.close());
  return { server, address, port: Number(address.split(':')[1]), state };
}

function client(
  address: string,
  opts: { token?: string; timeoutMs?: number; fallback?: () => Tracker } = {},
) {
  const c = new HttpTracker(
    address,
    opts.token ?? TOKEN,
    opts.timeoutMs ?? 5000,
    undefined,
    opts.fallback ?? noFallback,
  );
  cleanups.push(() => c.close());
  return c;
}

const fullAnnounce = (peer: string, port: number) => ({
  blob: BLOB,
  units: 16,
  peer_id: peer,
  address: `127.0.0.1:${port}`,
  full: true,
  bitmap: Buffer.from([0xff, 0x0f]),
});

/** One raw HTTP request: status, body text, and whether the server closed the connection. */
function raw(
  port: number,
  path: string,
  opts: { method?: string; headers?: Record<string, string | number>; body?: Buffer; chunks?: Buffer[] } = {},
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        method: opts.method ?? 'POST',
        headers: { 'x-dfnode-cluster-token': TOKEN, ...opts.headers },
        agent: false,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode!, text }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    if (opts.chunks) {
      // written one after another without waiting: the server may answer (and close) before the last
      for (const c of opts.chunks) req.write(c, () => undefined);
      req.end();
    } else req.end(opts.body);
  });
}

describe('tracker over HTTP', () => {
  it('announces and looks up with the same answers as the gRPC tracker on the same state', async () => {
    const s = await seedServer();
    const grpcSide = await serveTracker(s.state, '127.0.0.1:0', TOKEN);
    cleanups.push(() => grpcSide.stop());
    const a = client(s.address);
    expect(await a.announce(fullAnnounce('holder-a', 4001))).toMatchObject({ need_full: false });
    const viaHttp = await client(s.address).lookup({
      blob: BLOB,
      peer_id: 'asker',
      want_bitmap: Buffer.from([0xff, 0xff]),
      max_peers: 8,
    });
    const g = new TrackerClient(grpcSide.address, TOKEN, 5000);
    cleanups.push(() => g.close());
    const viaGrpc = await g.lookup({
      blob: BLOB,
      peer_id: 'asker',
      want_bitmap: Buffer.from([0xff, 0xff]),
      max_peers: 8,
    });
    expect(viaHttp.units).toBe(16);
    expect(viaHttp.holders.map((h) => [h.peer_id, h.address, Buffer.from(h.bitmap).toString('hex')])).toEqual(
      [['holder-a', '127.0.0.1:4001', 'ff0f']],
    );
    expect(viaHttp).toEqual(viaGrpc);
    expect(a.legacy).toBe(false);
    // an announce over HTTP and one over gRPC come from the same host: the id stays bound to it
    const viaGrpcAnnounce = await g.announce({ ...fullAnnounce('holder-a', 4001), full: false, added: [12] });
    expect(viaGrpcAnnounce.need_full).toBe(false);
    expect(s.state.counters).toMatchObject({ announces: 2, lookups: 2 });
  });

  it('asks the gRPC tracker on the next port of a seed that has no HTTP tracker', async () => {
    const state = new TrackerState();
    const old = new BlockServer({ provider: { get: async () => undefined }, clusterToken: TOKEN });
    const pair = await listenPair('127.0.0.1:0', old, (a) => serveTracker(state, a, TOKEN));
    cleanups.push(
      () => old.close(),
      () => pair.tracker.stop(),
    );
    let made = 0;
    const c = client(pair.blocks, {
      fallback: () => {
        made++;
        return new TrackerClient(trackerAddress(pair.blocks), TOKEN, 5000);
      },
    });
    await c.announce(fullAnnounce('holder-b', 4002));
    const r = await c.lookup({ blob: BLOB, peer_id: 'asker', max_peers: 4 });
    expect(r.holders.map((h) => h.peer_id)).toEqual(['holder-b']);
    expect(c.legacy).toBe(true);
    expect(made).toBe(1);
    expect(state.counters).toMatchObject({ announces: 1, lookups: 1 });
  });

  it('connect() opens the connection that the first call then uses', async () => {
    const s = await seedServer();
    let accepted = 0;
    const sockets = new Set<Socket>();
    const relay: Server = createServer((a) => {
      accepted++;
      const b = createConnection(s.port, '127.0.0.1');
      for (const x of [a, b]) {
        sockets.add(x);
        x.on('error', () => undefined);
      }
      a.pipe(b).pipe(a);
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    cleanups.push(
      () => new Promise<void>((r) => (sockets.forEach((x) => x.destroy()), relay.close(() => r()))),
    );
    const c = client(`127.0.0.1:${(relay.address() as { port: number }).port}`);
    await new Promise((r) => setTimeout(r, 100));
    expect(accepted).toBe(0);
    c.connect();
    for (let i = 0; i < 200 && accepted === 0; i++) await new Promise((r) => setTimeout(r, 10));
    expect(accepted).toBe(1);
    await new Promise((r) => setTimeout(r, 50));
    await c.lookup({ blob: BLOB, peer_id: 'asker', max_peers: 4 });
    expect(accepted).toBe(1);
  });

  it('a kept-alive connection closed under a call is retried once on a new one; a new one closed, or a seed that refuses, is NETWORK', async () => {
    const s = await seedServer();
    let n = 0;
    const sockets = new Set<Socket>();
    // connection 1 carries the first call, then is closed as the second arrives (a kept-alive connection
    // the seed dropped); with `closeNew`, every new connection is closed as its first request arrives
    let closeNew = false;
    const relay: Server = createServer((a) => {
      const conn = ++n;
      sockets.add(a.on('error', () => undefined));
      if (closeNew) return void a.once('data', () => a.destroy());
      const b = createConnection(s.port, '127.0.0.1');
      sockets.add(b.on('error', () => undefined));
      let k = 0;
      a.on('data', (d) => {
        if (conn === 1 && ++k === 2) a.destroy();
        else b.write(d);
      });
      b.pipe(a);
    });
    await new Promise<void>((r) => relay.listen(0, '127.0.0.1', r));
    const port = (relay.address() as { port: number }).port;
    cleanups.push(
      () => new Promise<void>((r) => (sockets.forEach((x) => x.destroy()), relay.close(() => r()))),
    );
    const c = client(`127.0.0.1:${port}`);
    await c.announce(fullAnnounce('holder-a', 4001));
    await c.announce(fullAnnounce('holder-a', 4001));
    expect(n).toBe(2);
    expect(s.state.counters.announces).toBe(2);
    // a new connection closed at once is the seed's answer: no second try
    closeNew = true;
    await expect(client(`127.0.0.1:${port}`).lookup({ blob: BLOB, peer_id: 'x' })).rejects.toMatchObject({
      code: 'NETWORK',
      message: expect.stringContaining('connection closed before an answer'),
    });
    expect(n).toBe(3);
    // the relay gone: refused, NETWORK (the node takes the seed for down)
    sockets.forEach((x) => x.destroy());
    await new Promise<void>((r) => relay.close(() => r()));
    await expect(client(`127.0.0.1:${port}`).lookup({ blob: BLOB, peer_id: 'x' })).rejects.toMatchObject({
      code: 'NETWORK',
    });
  });

  it('refuses a wrong token (UNAUTHORIZED) and the tracker refuses a bad message (INVALID_ARGUMENT)', async () => {
    const s = await seedServer();
    await expect(
      client(s.address, { token: 'wrong' }).lookup({ blob: BLOB, peer_id: 'x' }),
    ).rejects.toMatchObject({
      code: 'UNAUTHORIZED',
      message: expect.stringContaining('check p2p.clusterToken'),
    });
    await expect(client(s.address).lookup({ blob: 'sha256:nope', peer_id: 'x' })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringContaining('blob must be sha256:<64 hex digits>'),
    });
    expect(s.server.counters.unauthorized).toBe(1);
  });

  it('a full tracker answers 503 (NO_SPACE): alive, asked again later', async () => {
    const s = await seedServer(new TrackerState({ limits: { maxBlobs: 1 } }));
    const c = client(s.address);
    await c.announce(fullAnnounce('holder-a', 4001));
    await expect(
      c.announce({ ...fullAnnounce('holder-a', 4001), blob: 'sha256:' + '4d'.repeat(32) }),
    ).rejects.toMatchObject({
      code: 'NO_SPACE',
      message: expect.stringContaining('tracker full'),
    });
  });

  it('a tracker that does not answer in time is a TIMEOUT, not a seed that is down', async () => {
    const held = new Set<Socket>();
    const silent = createServer((sock) => held.add(sock.on('error', () => undefined)));
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    cleanups.push(
      () => new Promise<void>((r) => (held.forEach((x) => x.destroy()), silent.close(() => r()))),
    );
    const c = client(`127.0.0.1:${(silent.address() as { port: number }).port}`, { timeoutMs: 300 });
    const t0 = Date.now();
    await expect(c.lookup({ blob: BLOB, peer_id: 'x' })).rejects.toMatchObject({ code: 'TIMEOUT' });
    expect(Date.now() - t0).toBeLessThan(5000);
    // the caller's own signal ends a call at once (ABORTED, not a timeout of the seed)
    const slow = client(`127.0.0.1:${(silent.address() as { port: number }).port}`, { timeoutMs: 60_000 });
    const t1 = Date.now();
    await expect(slow.lookup({ blob: BLOB, peer_id: 'x' }, AbortSignal.timeout(200))).rejects.toMatchObject({
      code: expect.stringMatching(/ABORTED|TIMEOUT/),
    });
    expect(Date.now() - t1).toBeLessThan(5000);
  });

  it('answers hostile requests and keeps serving', async () => {
    const s = await seedServer(new TrackerState(), 300);
    const big = 3 * 1024 * 1024;
    // a declared length over the limit: refused before any of it is read
    const declared = await raw(s.port, '/tracker/v1/Lookup', {
      headers: { 'content-length': big },
      body: Buffer.alloc(0),
    });
    expect(declared).toMatchObject({ status: 413, text: expect.stringMatching(/at most 2097152 bytes/) });
    // a chunked body that goes past it
    const streamed = await raw(s.port, '/tracker/v1/Lookup', {
      chunks: Array.from({ length: 48 }, () => Buffer.alloc(64 * 1024, 0x08)),
    }).catch((err: Error) => ({ status: 0, text: err.message }));
    // 413, or the connection cut while the client still wrote
    if (streamed.status) expect(streamed).toMatchObject({ status: 413 });
    else expect(streamed.text).toMatch(/EPIPE|ECONNRESET|socket hang up/);
    // garbage: not a message
    const garbage = await raw(s.port, '/tracker/v1/Lookup', {
      body: Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]),
    });
    expect(garbage.status).toBe(400);
    expect(garbage.text).toMatch(/not a LookupRequest message/);
    // wrong method, unknown method
    expect(await raw(s.port, '/tracker/v1/Lookup', { method: 'GET' })).toMatchObject({ status: 405 });
    expect(await raw(s.port, '/tracker/v1/Nope', { body: Buffer.alloc(4) })).toMatchObject({ status: 404 });
    // a body that stalls: dropped after the server's idle limit, the connection closed
    const stalled = await new Promise<string>((resolve) => {
      const sock = netConnect(s.port, '127.0.0.1');
      let got = '';
      sock.on('data', (d) => (got += d.toString('latin1')));
      sock.on('close', () => resolve(got));
      sock.on('error', () => undefined);
      sock.write(
        `POST /tracker/v1/Lookup HTTP/1.1\r\nhost: x\r\nx-dfnode-cluster-token: ${TOKEN}\r\ncontent-length: 100\r\n\r\n0123456789`,
      );
    });
    expect(stalled).toMatch(/^HTTP\/1\.1 408/);
    expect(stalled).toMatch(/no progress for 300 ms/);
    // still serving
    const c = client(s.address);
    await c.announce(fullAnnounce('holder-a', 4001));
    expect((await c.lookup({ blob: BLOB, peer_id: 'asker' })).holders).toHaveLength(1);
  });

  it('a seed counts the calls its tracker answered over both transports (dfnode_tracker_requests_total)', async () => {
    const { dir, cleanup } = await tempDir('dfnode-tracker-http-');
    cleanups.push(cleanup);
    const seed = new Seed({
      config: loadConfig({
        env: {},
        flags: {
          cache: { dir: join(dir, 'cache') },
          p2p: { clusterToken: TOKEN, listen: '127.0.0.1:0', seeds: ['127.0.0.1:1'] },
        },
      }),
      client: {} as RegistryClient,
    });
    const a = await seed.start();
    cleanups.push(() => seed.close());
    const h = client(a.blocks);
    await h.announce(fullAnnounce('holder-a', 4001));
    await h.lookup({ blob: BLOB, peer_id: 'asker' });
    await h.lookup({ blob: BLOB, peer_id: 'asker' });
    const g = new TrackerClient(a.tracker, TOKEN, 5000);
    cleanups.push(() => g.close());
    expect((await g.lookup({ blob: BLOB, peer_id: 'asker' })).holders).toHaveLength(1);
    const m = new NodeMetrics({ defaultMetrics: false });
    m.onScrape(() => m.publishSeed(seed.metricsCounters));
    const text = await m.text();
    expect(text).toContain('dfnode_tracker_requests_total{method="announce"} 1');
    expect(text).toContain('dfnode_tracker_requests_total{method="lookup"} 3');
    expect(h.legacy).toBe(false);
  });

  for (const viaGrpc of [false, true])
    it(`a node announces its units over ${viaGrpc ? 'gRPC with DFNODE_TRACKER_GRPC=1' : 'HTTP by default'}`, async () => {
      const { dir, cleanup } = await tempDir('dfnode-tracker-node-');
      cleanups.push(cleanup);
      // the tracker the node should use, and a decoy on the other transport
      const state = new TrackerState();
      const decoy = new TrackerState();
      const blocks = new BlockServer({
        provider: { get: async () => undefined },
        clusterToken: TOKEN,
        tracker: viaGrpc ? decoy : state,
      });
      const pair = await listenPair('127.0.0.1:0', blocks, (a) =>
        serveTracker(viaGrpc ? state : decoy, a, TOKEN),
      );
      cleanups.push(
        () => blocks.close(),
        () => pair.tracker.stop(),
      );
      const node = await startNode({
        seed: pair.blocks,
        token: TOKEN,
        announceIntervalMs: 200,
        viaGrpc,
        cleanups,
      });
      const layout = new PieceLayout(4 * 65536, 65536);
      await joinWithUnit(node, { dir, digest: BLOB, layout, unit: 1, cleanups });
      const a = state.lookup({
        blob: BLOB,
        peer_id: 'asker',
        want_bitmap: Buffer.from([0x0f]),
        max_peers: 4,
      } as never);
      expect(a.holders.map((h) => [h.peer_id, Buffer.from(h.bitmap).toString('hex')])).toEqual([
        [node.id, '02'],
      ]);
    });

  it('bodies being read at once are bounded: beyond, 503 at once; served again when they are gone', async () => {
    const s = await seedServer(new TrackerState(), 30_000, 3 * 1024 * 1024);
    // two clients declare 1.5 MiB bodies and send a little of them: 3 MiB held
    const slow: Socket[] = [];
    for (let i = 0; i < 2; i++) {
      const sock = netConnect(s.port, '127.0.0.1');
      sock.on('error', () => undefined);
      sock.write(
        `POST /tracker/v1/Lookup HTTP/1.1\r\nhost: x\r\nx-dfnode-cluster-token: ${TOKEN}\r\ncontent-length: ${1536 * 1024}\r\n\r\nxx`,
      );
      slow.push(sock);
    }
    cleanups.push(() => slow.forEach((x) => x.destroy()));
    await new Promise((r) => setTimeout(r, 200));
    const c = client(s.address);
    await expect(c.lookup({ blob: BLOB, peer_id: 'asker' })).rejects.toMatchObject({
      code: 'NO_SPACE',
      message: expect.stringMatching(/busy: 3145728 bytes of tracker requests are being read/),
    });
    slow.forEach((x) => x.destroy());
    await new Promise((r) => setTimeout(r, 200));
    expect((await c.lookup({ blob: BLOB, peer_id: 'asker' })).holders).toEqual([]);
  });

  it('binds announces to the caller host alike over both transports (IPv4 on a dual-stack socket)', () => {
    expect(callerHost('::ffff:10.1.2.3:41000')).toBe('10.1.2.3');
    expect(callerHost('10.1.2.3:41000')).toBe('10.1.2.3');
    expect(callerHost('::1:41000')).toBe('::1');
    expect(callerHost('[::ffff:10.1.2.3]')).toBe('10.1.2.3');
    expect(callerHost(undefined)).toBeUndefined();
  });
});
