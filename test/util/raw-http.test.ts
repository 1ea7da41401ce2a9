/**
 * The raw HTTP/1.1 range client (src/util/raw-http.ts) against raw hosts on loopback: bodies land in the
 * caller's buffer, connections are kept and reused (after a short error answer too, with a declared length
 * or in chunks), interim answers are skipped, hostile heads and stray bytes are refused, requests over the
 * per-host limit wait their turn, and an abort ends a request at once without leaking its connection.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createTlsServer } from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { errorTextHead } from '../../src/util/http-answer.js';
import { RawHttpPool, type RawRequest } from '../../src/util/raw-http.js';

const servers: Server[] = [];
const sockets = new Set<Socket>();
const pools: RawHttpPool[] = [];

afterEach(async () => {
  for (const p of pools.splice(0)) await p.close();
  sockets.forEach((s) => s.destroy());
  sockets.clear();
  for (const s of servers.splice(0)) await new Promise((r) => s.close(r));
});

/**
 * A raw host: `answer(conn, path, socket, body)` for every request head (conn counts from 1); `body` is a
 * request body that came with the head (its Content-Length).
 */
async function host(answer: (conn: number, path: string, s: Socket, body: string) => void) {
  let n = 0;
  const server = createServer((s) => {
    const conn = ++n;
    sockets.add(s.on('error', () => undefined));
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString('latin1');
      for (let i = buf.indexOf('\r\n\r\n'); i >= 0; i = buf.indexOf('\r\n\r\n')) {
        const head = buf.slice(0, i);
        const path = head.split(' ')[1] ?? '';
        const length = Number(/content-length: (\d+)/i.exec(head)?.[1] ?? 0);
        const body = buf.slice(i + 4, i + 4 + length);
        buf = buf.slice(i + 4 + length);
        answer(conn, path, s, body);
      }
    });
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { address: `127.0.0.1:${(server.address() as { port: number }).port}`, conns: () => n };
}

function pool(maxPerHost = 4): RawHttpPool {
  const p = new RawHttpPool({ connectTimeoutMs: 5000, maxPerHost, idleMs: 10_000, lowat: false });
  pools.push(p);
  return p;
}

/** A GET whose 200 body goes into a buffer of `length`; error answers keep 200 bytes of text. */
function req(path: string, length: number, signal = AbortSignal.timeout(10_000)): RawRequest {
  return {
    path,
    headers: { 'x-token': 't' },
    signal,
    onHead: (status) =>
      status === 200
        ? { into: Buffer.alloc(length), tooLong: () => new DfError('NETWORK', 'too long') }
        : errorTextHead(200),
  };
}

const ok = (body: Buffer, extra = '') =>
  Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\ncontent-length: ${body.length}\r\n${extra}\r\n`), body]);

describe('raw HTTP range client', () => {
  it('reads bodies into the buffer and reuses one connection for requests in a row', async () => {
    const body = Buffer.from(Array.from({ length: 300_000 }, (_, i) => i & 0xff));
    const h = await host((_c, path, s) => {
      // the head and the body's first bytes in one write, the rest in pieces
      const at = Number(path.slice(1));
      const all = ok(body.subarray(at, at + 100_000));
      s.write(all.subarray(0, 1000));
      setTimeout(() => s.write(all.subarray(1000)), 5);
    });
    const p = pool();
    for (const at of [0, 100_000, 200_000]) {
      const r = await p.request(h.address, req(`/${at}`, 100_000));
      expect(r.statusCode).toBe(200);
      expect(r.got).toBe(100_000);
      expect(r.body.equals(body.subarray(at, at + 100_000))).toBe(true);
    }
    expect(h.conns()).toBe(1);
  });

  it('keeps the connection after a short error answer, declared or in chunks, and skips 1xx', async () => {
    const h = await host((_c, path, s) => {
      if (path === '/declared') s.write('HTTP/1.1 409 Conflict\r\ncontent-length: 5\r\n\r\nlater');
      else if (path === '/chunked')
        s.write('HTTP/1.1 429 Busy\r\ntransfer-encoding: chunked\r\n\r\n4\r\nbusy\r\n3\r\n...\r\n0\r\n\r\n');
      else s.write('HTTP/1.1 100 Continue\r\n\r\n' + ok(Buffer.from('data')).toString('latin1'));
    });
    const p = pool();
    const d = await p.request(h.address, req('/declared', 4));
    expect([d.statusCode, d.body.subarray(0, d.got).toString()]).toEqual([409, 'later']);
    const c = await p.request(h.address, req('/chunked', 4));
    expect([c.statusCode, c.body.subarray(0, c.got).toString()]).toEqual([429, 'busy...']);
    const o = await p.request(h.address, req('/ok', 4));
    expect([o.statusCode, o.body.toString()]).toEqual([200, 'data']);
    expect(h.conns()).toBe(1);
  });

  it('refuses a head that never ends, a non-HTTP answer and bytes sent without a request', async () => {
    const h = await host((conn, path, s) => {
      if (path === '/huge') s.write('HTTP/1.1 200 OK\r\nx: ' + 'a'.repeat(20_000));
      else if (path === '/junk') s.write('SSH-2.0-OpenSSH\r\n\r\n');
      else s.write(Buffer.concat([ok(Buffer.from('data')), Buffer.from('HTTP/1.1 200 OK\r\n')]));
      void conn;
    });
    const p = pool();
    await expect(p.request(h.address, req('/huge', 4))).rejects.toThrow(/head over 16384 bytes/);
    await expect(p.request(h.address, req('/junk', 4))).rejects.toThrow(/not an HTTP\/1\.1 answer/);
    // an answer followed by bytes nobody asked for: the answer is good, the connection is not kept
    const r = await p.request(h.address, req('/stray', 4));
    expect(r.body.toString()).toBe('data');
    await p.request(h.address, req('/stray', 4));
    expect(h.conns()).toBe(4);
  });

  it('a 2xx body longer than the buffer is refused unread', async () => {
    let sent = 0;
    const h = await host((_c, _p, s) => {
      s.write('HTTP/1.1 200 OK\r\ncontent-length: 67108864\r\n\r\n');
      const chunk = Buffer.alloc(64 * 1024);
      const pump = () => {
        while (!s.destroyed && sent < 64 << 20) {
          sent += chunk.length;
          if (!s.write(chunk)) return void s.once('drain', pump);
        }
      };
      pump();
    });
    await expect(pool().request(h.address, req('/', 1024))).rejects.toThrow('too long');
    await new Promise((r) => setTimeout(r, 100));
    expect(sent).toBeLessThan(16 << 20);
  });

  it('requests over the per-host limit wait for a connection, in order', async () => {
    const held: Socket[] = [];
    const h = await host((_c, path, s) => {
      if (path === '/hold') held.push(s);
      else s.write(ok(Buffer.from(path.slice(1, 5))));
    });
    const p = pool(2);
    const a = p.request(h.address, req('/hold', 4));
    const b = p.request(h.address, req('/hold', 4));
    const order: string[] = [];
    const c = p.request(h.address, req('/ccc1', 4)).then((r) => order.push(r.body.toString()));
    const d = p.request(h.address, req('/ddd2', 4)).then((r) => order.push(r.body.toString()));
    await new Promise((r) => setTimeout(r, 100));
    expect(h.conns()).toBe(2);
    expect(order).toEqual([]);
    held[0]!.write(ok(Buffer.from('aaaa')));
    expect((await a).body.toString()).toBe('aaaa');
    await Promise.all([c, d]);
    expect(order).toEqual(['ccc1', 'ddd2']);
    held[1]!.write(ok(Buffer.from('bbbb')));
    expect((await b).body.toString()).toBe('bbbb');
    expect(h.conns()).toBe(2);
  });

  it('a retry after a stale connection gets a new connection even while the host is at its limit', async () => {
    const held: Socket[] = [];
    let stale = 0;
    const h = await host((_c, path, s) => {
      if (path === '/hold') held.push(s);
      // the first /stale: the host closes the kept-alive connection it came on
      else if (path === '/stale' && stale++ === 0) s.destroy();
      else s.write(ok(Buffer.from(path.slice(1, 5))));
    });
    const p = pool(2);
    await Promise.all([p.request(h.address, req('/ok11', 4)), p.request(h.address, req('/ok22', 4))]);
    const hold = p.request(h.address, req('/hold', 4));
    const retried = p.request(h.address, req('/stale', 4));
    // at the limit: waits, then takes the place the stale connection left before the retry asks for one
    const queued = p.request(h.address, req('/qqqq', 4));
    expect((await queued).body.toString()).toBe('qqqq');
    // the retry needs a new connection: the one the queued request freed makes room (not kept idle)
    expect((await retried).body.toString()).toBe('stal');
    expect(h.conns()).toBe(4);
    held[0]!.write(ok(Buffer.from('held')));
    expect((await hold).body.toString()).toBe('held');
  });

  it('an abort ends a request mid-body at once, closes its connection, and a queued one leaves the queue', async () => {
    const closed: number[] = [];
    const h = await host((conn, path, s) => {
      s.once('close', () => closed.push(conn));
      if (path === '/slow') s.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc');
      else s.write(ok(Buffer.from('fine')));
    });
    const p = pool(1);
    const ac = new AbortController();
    const slow = p.request(h.address, req('/slow', 100, ac.signal));
    const queued = new AbortController();
    const waiting = p.request(h.address, req('/x', 4, queued.signal));
    queued.abort(new DfError('ABORTED', 'queued one gone'));
    await expect(waiting).rejects.toThrow('queued one gone');
    await new Promise((r) => setTimeout(r, 50));
    ac.abort(new DfError('TIMEOUT', 'too slow'));
    await expect(slow).rejects.toThrow('too slow');
    await expect.poll(() => closed).toEqual([1]);
    // the place is free again
    expect((await p.request(h.address, req('/x', 4))).body.toString()).toBe('fine');
  });

  it('a host that is not there fails fast with the reason', async () => {
    const h = await host(() => undefined);
    const address = h.address;
    await new Promise((r) => servers.pop()!.close(r));
    await expect(pool().request(address, req('/', 4))).rejects.toMatchObject({
      code: 'NETWORK',
      message: expect.stringMatching(/connection closed before an answer.*ECONNREFUSED/),
    });
  });

  it('ends with the error the head decides on, or the one progress throws; an aborted signal sends nothing', async () => {
    const h = await host((_c, _p, s) => s.write(ok(Buffer.alloc(64 * 1024, 1))));
    const p = pool();
    const head: RawRequest = { ...req('/', 4), onHead: () => new DfError('FORBIDDEN', 'not this one') };
    await expect(p.request(h.address, head)).rejects.toThrow('not this one');
    const thrower: RawRequest = {
      ...req('/', 64 * 1024),
      progress: () => {
        throw new Error('enough');
      },
    };
    await expect(p.request(h.address, thrower)).rejects.toThrow('enough');
    const before = h.conns();
    await expect(
      p.request(h.address, req('/', 4, AbortSignal.abort(new DfError('ABORTED', 'gone')))),
    ).rejects.toThrow('gone');
    expect(h.conns()).toBe(before);
  });

  it('POSTs a body with its length; a 204 has no body whatever its head says', async () => {
    const h = await host((_c, path, s, body) => {
      if (path === '/none') s.write('HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n');
      else s.write(ok(Buffer.from(body.toUpperCase())));
    });
    const p = pool();
    const r = await p.request(h.address, { ...req('/echo', 5), method: 'POST', body: Buffer.from('hello') });
    expect(r.body.toString()).toBe('HELLO');
    const n = await p.request(h.address, req('/none', 4));
    expect([n.statusCode, n.got]).toEqual([204, 0]);
    // the same connection, still usable
    expect(
      (
        await p.request(h.address, { ...req('/echo', 2), method: 'POST', body: Buffer.from('ok') })
      ).body.toString(),
    ).toBe('OK');
    expect(h.conns()).toBe(1);
  });

  it('names the host in TLS (SNI) when it is a name, not when it is an address', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'raw-sni-'));
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:prime256v1',
          '-nodes',
          '-keyout',
          join(dir, 'k.pem'),
          '-out',
          join(dir, 'c.pem'),
          '-days',
          '1',
          '-subj',
          '/CN=localhost',
        ],
        { stdio: 'ignore' },
      );
      const names: (string | undefined)[] = [];
      const server = createTlsServer(
        { key: readFileSync(join(dir, 'k.pem')), cert: readFileSync(join(dir, 'c.pem')) },
        (s) => {
          names.push((s as unknown as { servername?: string | false }).servername || undefined);
          s.on('error', () => undefined);
          s.once('data', () => s.end(ok(Buffer.from('hi'))));
        },
      );
      servers.push(server as unknown as Server);
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      const port = (server.address() as { port: number }).port;
      const p = new RawHttpPool({
        connectTimeoutMs: 5000,
        maxPerHost: 1,
        idleMs: 10_000,
        lowat: false,
        tls: { rejectUnauthorized: false },
      });
      pools.push(p);
      for (const h of [`localhost:${port}`, `127.0.0.1:${port}`])
        expect((await p.request(h, req('/x', 2))).body.toString()).toBe('hi');
      expect(names).toEqual(['localhost', undefined]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
