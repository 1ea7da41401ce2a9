/**
 * The block client and a connection closed under a request (raw sockets on loopback): a kept-alive connection
 * closed as the next request arrives, before any answer, sends the request once more on a new connection;
 * closed again, a new connection closed at once (a TLS handshake refused, a host going down), or closed after
 * the answer began: it fails, so that a host that is really gone still counts against itself.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';

const DIGEST = 'sha256:' + 'ab'.repeat(32);
const LEN = 64 * 1024;

/**
 * A raw HTTP/1.1 host: `answer(n, k, s)` decides what connection n (from 1) does with its k-th request (from 1).
 */
async function host(
  answer: (n: number, k: number, s: Socket) => void,
): Promise<{ address: string; conns: () => number }> {
  let n = 0;
  const server: Server = createServer((s) => {
    const conn = ++n;
    let k = 0;
    sockets.add(s.on('error', () => undefined));
    s.on('data', () => answer(conn, ++k, s));
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, conns: () => n };
}

const sockets = new Set<Socket>();
const servers: Server[] = [];
const clients: HttpBlockClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  sockets.forEach((s) => s.destroy());
  sockets.clear();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/** A 200 answer of LEN bytes; the connection stays open for the next request. */
const ok = (s: Socket) =>
  s.write(
    Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${LEN}\r\n\r\n`), Buffer.alloc(LEN, 5)]),
  );

function client(): HttpBlockClient {
  const c = new HttpBlockClient('token');
  clients.push(c);
  return c;
}

describe('block client: a connection closed under a request', () => {
  const get = (c: HttpBlockClient, address: string) =>
    c.get(address, DIGEST, 0, LEN, AbortSignal.timeout(10_000));
  /** The first answer, then a moment for its connection to go back to the client's pool (kept alive). */
  const first = async (c: HttpBlockClient, address: string) => {
    expect((await get(c, address)).equals(Buffer.alloc(LEN, 5))).toBe(true);
    await new Promise((r) => setTimeout(r, 50));
  };

  it('a kept-alive connection closed as the next request arrives: sent once more on a new connection', async () => {
    // connection 1 answers its first request and closes as the second arrives; connection 2 answers
    const h = await host((n, k, s) => (n === 1 && k === 2 ? s.destroy() : ok(s)));
    const c = client();
    await first(c, h.address);
    expect((await get(c, h.address)).equals(Buffer.alloc(LEN, 5))).toBe(true);
    expect(h.conns()).toBe(2);
  });

  it('closed again on the new connection, or a new connection closed at once: fails, no third try', async () => {
    const h = await host((n, k, s) => (n === 1 && k === 1 ? ok(s) : s.destroy()));
    const c = client();
    await first(c, h.address);
    await expect(get(c, h.address)).rejects.toMatchObject({ code: 'NETWORK' });
    expect(h.conns()).toBe(2);
    // a host that closes every new connection at once is asked once
    const down = await host((_n, _k, s) => s.destroy());
    await expect(get(client(), down.address)).rejects.toMatchObject({ code: 'NETWORK' });
    expect(down.conns()).toBe(1);
  });

  it('closed after the answer began: fails without another try', async () => {
    const h = await host((_n, k, s) => {
      if (k === 1) return ok(s);
      s.write(`HTTP/1.1 200 OK\r\ncontent-length: ${LEN}\r\n\r\n`);
      s.write(Buffer.alloc(1000, 5), () => setTimeout(() => s.destroy(), 50));
    });
    const c = client();
    await first(c, h.address);
    await expect(get(c, h.address)).rejects.toThrow();
    expect(h.conns()).toBe(1);
  });
});
