/**
 * A seed pipelines the registry requests nobody is blocked on (nodes' planned fill runs, its own fill) on
 * one connection: the next request is at the registry before the answer ahead of it has ended, so the
 * registry's link never waits a round trip between answers. A read a node is blocked on never queues
 * behind them. Real Seed, RegistryClient and block server over loopback; the registry is a raw TCP server
 * that records on which connection each request arrived and what was still unanswered on it.
 */
import { once } from 'node:events';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Seed } from '../../src/p2p/seed.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';
import { RegistryClient } from '../../src/registry/client.js';
import { makeBlob, type TestBlob } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const TOKEN = 'seed-registry-pipeline-token';

interface Arrival {
  conn: number;
  method: string;
  start: number;
  end: number;
  /** Answers on the same connection not yet completely written when this request arrived. */
  unfinishedAhead: number;
}

/**
 * A registry for one blob, HTTP/1.1 over raw sockets: answers HEAD and ranged GETs of the blob in order per
 * connection (pipelined requests wait for the answers ahead). `hold(start)` makes the answer of the range
 * that starts there send its head and half its body, then wait for release().
 */
function rawRegistry(tb: TestBlob) {
  const arrivals: Arrival[] = [];
  const holds = new Map<number, Promise<void>>();
  const releases = new Map<number, () => void>();
  const sockets = new Set<Socket>();
  let conns = 0;
  const path = `/v2/x/blobs/${tb.blob.digest}`;
  const server: Server = createServer((sock) => {
    sockets.add(sock);
    sock.on('close', () => sockets.delete(sock));
    sock.on('error', () => undefined);
    const conn = ++conns;
    let buf = '';
    let unfinished = 0;
    let chain = Promise.resolve();
    sock.on('data', (d: Buffer) => {
      buf += d.toString('latin1');
      if (buf.length > 64 * 1024) return void sock.destroy();
      for (let i = buf.indexOf('\r\n\r\n'); i >= 0; i = buf.indexOf('\r\n\r\n')) {
        const head = buf.slice(0, i);
        buf = buf.slice(i + 4);
        const [line, ...lines] = head.split('\r\n');
        const [method, target] = line!.split(' ');
        const range = lines.find((l) => /^range:/i.test(l))?.match(/bytes=(\d+)-(\d+)/);
        const start = range ? Number(range[1]) : 0;
        const end = range ? Number(range[2]) : tb.blob.size - 1;
        arrivals.push({ conn, method: method!, start, end, unfinishedAhead: unfinished });
        unfinished++;
        chain = chain.then(() =>
          answer(sock, method!, target!, range !== null && range !== undefined, start, end),
        );
        void chain.then(() => unfinished--);
      }
    });
  });
  const answer = async (
    sock: Socket,
    method: string,
    target: string,
    ranged: boolean,
    start: number,
    end: number,
  ) => {
    if (target !== path || (method !== 'GET' && method !== 'HEAD')) {
      sock.write('HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n');
      return;
    }
    if (method === 'HEAD') {
      sock.write(`HTTP/1.1 200 OK\r\ncontent-length: ${tb.blob.size}\r\n\r\n`);
      return;
    }
    const body = tb.bytes.subarray(start, end + 1);
    const status = ranged ? '206 Partial Content' : '200 OK';
    const cr = ranged ? `content-range: bytes ${start}-${end}/${tb.blob.size}\r\n` : '';
    sock.write(`HTTP/1.1 ${status}\r\n${cr}content-length: ${body.length}\r\n\r\n`);
    const held = holds.get(start);
    if (held) {
      const half = Math.floor(body.length / 2);
      sock.write(body.subarray(0, half));
      await held;
      sock.write(body.subarray(half));
    } else sock.write(body);
  };
  return {
    arrivals,
    hold(start: number) {
      holds.set(start, new Promise<void>((r) => releases.set(start, r)));
    },
    release(start: number) {
      releases.get(start)?.();
    },
    async listen(): Promise<string> {
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      const a = server.address();
      if (!a || typeof a === 'string') throw new Error('no address');
      return `127.0.0.1:${a.port}`;
    },
    async close() {
      for (const r of releases.values()) r();
      for (const s of sockets) s.destroy();
      server.close();
      await once(server, 'close').catch(() => undefined);
    },
  };
}

const cleanups = cleanupsAfterEach();

async function setup() {
  const { dir, cleanup } = await tempDir();
  cleanups.push(cleanup);
  const tb = await makeBlob(dir);
  const registry = rawRegistry(tb);
  const host = await registry.listen();
  cleanups.push(() => registry.close());
  const client = new RegistryClient({ plainHttp: true, retries: 0, timeoutMs: 20_000 });
  cleanups.push(() => client.close());
  const config = loadConfig({
    env: {},
    flags: {
      cache: { dir: join(dir, 'seed-cache') },
      p2p: {
        clusterToken: TOKEN,
        listen: '127.0.0.1:0',
        seedFill: false,
        seedRegistries: [host],
        seedRegistryPipeline: 8,
      },
    },
  });
  const seed = new Seed({ config, client });
  const { blocks } = await seed.start();
  cleanups.push(() => seed.close());
  const http = new HttpBlockClient(TOKEN, undefined, 'node-a');
  cleanups.push(() => http.close());
  const layout = new UnitLayout(tb.toc, tb.blob.size);
  /** A node's request for units [a, b]: planned (defer=1, a fill run) or a read it is blocked on. */
  const ask = (a: number, b: number, planned: boolean) => {
    const offset = layout.offset(a);
    const length = layout.offset(b + 1) - offset;
    const hint = { repo: `${host}/x`, size: String(tb.blob.size), ...(planned ? { defer: '1' } : {}) };
    return http
      .get(blocks, tb.blob.digest, offset, length, AbortSignal.timeout(20_000), hint)
      .then((data) => ({ ok: data.equals(tb.bytes.subarray(offset, offset + length)), offset }));
  };
  // the node opens the blob (footer + TOC) first, as a real one does: the seed's open is done after this
  const tocUnit = layout.units - 1;
  expect((await ask(tocUnit, tocUnit, false)).ok).toBe(true);
  const gets = () => registry.arrivals.filter((x) => x.method === 'GET' && x.start < layout.offset(tocUnit));
  return { registry, layout, ask, gets };
}

describe('seed registry pipeline', () => {
  it('sends the next planned run to the registry on the same connection before the answer ahead has ended', async () => {
    const { registry, layout, ask, gets } = await setup();
    const first = layout.offset(0);
    const second = layout.offset(10);
    registry.hold(first);
    const a = ask(0, 9, true);
    // the second run goes out once the first is at the registry (as a node's next run does)
    await waitFor(() => gets().length >= 1);
    const b = ask(10, 19, true);
    await waitFor(() => gets().some((x) => x.start === second));
    registry.release(first);
    expect(await a).toEqual({ ok: true, offset: first });
    expect(await b).toEqual({ ok: true, offset: second });
    const [ga, gb] = gets();
    expect(ga!.start).toBe(first);
    expect(gb!.start).toBe(second);
    // one connection, the second request there while the first answer was still on its way
    expect(gb!.conn).toBe(ga!.conn);
    expect(gb!.unfinishedAhead).toBe(1);
    // still one registry fetch per block
    expect(gets()).toHaveLength(2);
  });

  it('never queues a read a node is blocked on behind a planned run', async () => {
    const { registry, layout, ask, gets } = await setup();
    const first = layout.offset(0);
    registry.hold(first);
    const a = ask(0, 9, true);
    await waitFor(() => gets().length >= 1);
    // answered while the planned run is held at the registry: it went on a connection of its own
    const c = await ask(20, 22, false);
    expect(c.ok).toBe(true);
    const read = gets().find((x) => x.start === layout.offset(20))!;
    expect(read.conn).not.toBe(gets()[0]!.conn);
    registry.release(first);
    expect((await a).ok).toBe(true);
  });
});

/** Polls `cond` until true (the registry's view of requests the seed sends on its own schedule). */
async function waitFor(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}
