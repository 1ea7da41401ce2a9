/**
 * Blob ranges on raw sockets once the full path showed the way (src/registry/fast-ranges.ts), against a real
 * HTTP server on loopback that asks for Basic auth: the lane carries the credentials the full path sent;
 * anything but the exact 206 (an expired login, another range, an error, a short body) falls back to the full
 * path with the right bytes; a redirect to another origin is never taken as a lane; an abort rejects.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { RegistryClient } from '../../src/registry/client.js';
import { StaticCredentials } from '../../src/registry/credentials.js';
import { parseReference } from '../../src/registry/reference.js';

const D = `sha256:${'1'.repeat(64)}`;
const BLOB = randomBytes(300_000);
const AUTH = `Basic ${Buffer.from('u:p').toString('base64')}`;

type Mode = 'ok' | 'unauthorized' | 'wrong-range' | 'error' | 'short' | 'hang';

interface Seen {
  path: string;
  range: string;
  auth: string | undefined;
}

async function serve(
  handler: (rq: IncomingMessage, res: ServerResponse) => void,
): Promise<{ server: Server; host: string }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, host: `127.0.0.1:${(server.address() as AddressInfo).port}` };
}

describe('registry blob ranges on raw sockets', () => {
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function registry(o: { redirectTo?: string; open?: boolean; timeoutMs?: number } = {}) {
    const seen: Seen[] = [];
    let mode: Mode = 'ok';
    const { server, host } = await serve((rq, res) => {
      const range = rq.headers.range ?? '';
      seen.push({ path: rq.url ?? '', range, auth: rq.headers.authorization });
      if ((!o.open && rq.headers.authorization !== AUTH) || mode === 'unauthorized') {
        // no login, or an expired one (once: the full path's fresh credentials work again)
        if (mode === 'unauthorized') mode = 'ok';
        res.writeHead(401, { 'www-authenticate': 'Basic realm="test"', 'content-length': 0 });
        return res.end();
      }
      if (o.redirectTo) {
        res.writeHead(307, { location: `${o.redirectTo}${rq.url}`, 'content-length': 0 });
        return res.end();
      }
      const m = /^bytes=(\d+)-(\d+)$/.exec(range);
      if (!m || mode === 'error') {
        res.writeHead(500, { 'content-length': 4 });
        if (mode === 'error') mode = 'ok';
        return res.end('oops');
      }
      const b = Number(m[2]);
      let a = Number(m[1]);
      if (mode === 'wrong-range') {
        mode = 'ok';
        a += 1;
      }
      const body = BLOB.subarray(a, b + 1);
      res.writeHead(206, {
        'content-range': `bytes ${a}-${b}/${BLOB.length}`,
        'content-length': body.length,
      });
      if (mode === 'short') {
        mode = 'ok';
        return res.write(body.subarray(0, 10), () => res.socket?.destroy());
      }
      if (mode === 'hang') {
        // once: 10 bytes, then nothing (the connection stays open)
        mode = 'ok';
        return res.write(body.subarray(0, 10));
      }
      res.end(body);
    });
    cleanups.push(() => new Promise((r) => server.close(() => r())));
    const client = new RegistryClient({
      plainHttp: true,
      credentials: new StaticCredentials({ username: 'u', password: 'p' }),
      retries: 1,
      retryBaseMs: 1,
      retryMaxMs: 2,
      timeoutMs: o.timeoutMs,
    });
    cleanups.push(() => client.close());
    return { client, seen, host, setMode: (m: Mode) => (mode = m) };
  }

  const want = (offset: number, length: number) => BLOB.subarray(offset, offset + length);

  it('takes the lane the full path found, with its credentials; falls back on anything else', async () => {
    const { client, seen, host, setMode } = await registry();
    const ref = parseReference(`${host}/a/b:1`);
    const fast = client.fastRanges!;
    expect(fast).toBeDefined();
    // the full path: a challenge, then the range with Basic credentials
    expect((await client.getBlobRange(ref, D, 1000, 5000)).equals(want(1000, 5000))).toBe(true);
    expect(fast.counts.served).toBe(0);
    // the lane: one request, the same credentials, the right bytes
    let n = seen.length;
    expect((await client.getBlobRange(ref, D, 70_000, 100_000)).equals(want(70_000, 100_000))).toBe(true);
    expect(fast.counts.served).toBe(1);
    expect(seen.slice(n)).toEqual([{ path: `/v2/a/b/blobs/${D}`, range: 'bytes=70000-169999', auth: AUTH }]);

    // each failure on a blob of its own: the lane is dropped, the full path answers with the right bytes, and
    // the blob gets no new lane for a while (a lane that cannot work is not tried per request)
    for (const [i, mode] of (['wrong-range', 'error', 'short', 'unauthorized'] as const).entries()) {
      const d = `sha256:${String(i + 2).repeat(64)}`;
      await client.getBlobRange(ref, d, 0, 10);
      const served = fast.counts.served;
      expect((await client.getBlobRange(ref, d, 10, 10)).equals(want(10, 10))).toBe(true);
      expect(fast.counts.served, mode).toBe(served + 1);
      setMode(mode);
      const dropped = fast.counts.dropped;
      expect((await client.getBlobRange(ref, d, 200_000, 50_000)).equals(want(200_000, 50_000)), mode).toBe(
        true,
      );
      expect(fast.counts.dropped, mode).toBe(dropped + 1);
      await client.getBlobRange(ref, d, 0, 10);
      expect((await client.getBlobRange(ref, d, 20, 10)).equals(want(20, 10))).toBe(true);
      expect(fast.counts.served, mode).toBe(served + 1);
    }
    // the first blob's lane is unaffected
    n = seen.length;
    expect((await client.getBlobRange(ref, D, 5, 5)).equals(want(5, 5))).toBe(true);
    expect(seen.length - n).toBe(1);
  });

  it('an abort rejects the lane request (no fallback)', async () => {
    const { client, host, setMode } = await registry();
    const ref = parseReference(`${host}/a/b:1`);
    await client.getBlobRange(ref, D, 0, 10);
    setMode('hang');
    const ac = new AbortController();
    const p = client.getBlobRange(ref, D, 0, 100_000, { signal: ac.signal });
    setTimeout(() => ac.abort(new Error('stop')), 100);
    await expect(p).rejects.toThrow(/stop/);
    expect(client.fastRanges!.counts.dropped).toBe(0);
  });

  it('a lane that stalls is given up after the client timeout and the full path answers', async () => {
    const { client, host, setMode } = await registry({ timeoutMs: 400 });
    const ref = parseReference(`${host}/a/b:1`);
    await client.getBlobRange(ref, D, 0, 10);
    setMode('hang');
    const t0 = Date.now();
    expect((await client.getBlobRange(ref, D, 1000, 100_000)).equals(want(1000, 100_000))).toBe(true);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
    expect(client.fastRanges!.counts).toEqual({ served: 0, dropped: 1 });
  });

  it('a range the registry redirects to another origin is never a lane', async () => {
    const origin = await registry({ open: true });
    const front = await registry({ redirectTo: `http://${origin.host}` });
    const ref = parseReference(`${front.host}/a/b:1`);
    for (let i = 0; i < 3; i++)
      expect((await front.client.getBlobRange(ref, D, i * 10, 10)).equals(want(i * 10, 10))).toBe(true);
    expect(front.client.fastRanges!.counts.served).toBe(0);
    // every range went through the front (the full path), and the front's credentials never to the origin
    expect(front.seen.filter((s) => s.auth === AUTH).length).toBe(3);
    expect(origin.seen.length).toBe(3);
    expect(origin.seen.every((s) => s.auth === undefined)).toBe(true);
  });
});
