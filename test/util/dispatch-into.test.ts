/**
 * dispatchInto against a real HTTP server on loopback: the body lands in the buffer the head chose, in
 * order, with progress per chunk; too long a body is cut off (or kept up to the buffer when the head says
 * so); a head, progress or signal error ends the request with that error.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Agent } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dispatchInto, type DispatchIntoOptions } from '../../src/util/dispatch-into.js';

const BODY = Buffer.from(Array.from({ length: 300_000 }, (_, i) => (i * 7) % 251));

describe('dispatchInto', () => {
  let server: Server;
  let origin: string;
  const agent = new Agent();

  beforeAll(async () => {
    server = createServer((req, res) => {
      if (req.url === '/slow') {
        // the head and a first chunk, then nothing: the client's signal has to end it
        res.writeHead(200, { 'content-length': BODY.length });
        res.write(BODY.subarray(0, 1000));
        return;
      }
      res.writeHead(req.url === '/error' ? 503 : 200, { 'x-test': 'yes' });
      // several writes: several chunks
      for (let i = 0; i < BODY.length; i += 50_000) res.write(BODY.subarray(i, i + 50_000));
      res.end();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await agent.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const get = (path: string, o: Partial<DispatchIntoOptions>) =>
    dispatchInto(agent, {
      origin,
      path,
      headers: {},
      signal: AbortSignal.timeout(30_000),
      onHead: () => ({ into: Buffer.alloc(BODY.length), tooLong: () => new Error('too long') }),
      ...o,
    });

  it('copies the body into the chosen buffer, telling progress of each chunk', async () => {
    const filled: number[] = [];
    const res = await get('/', { progress: (_data, n) => filled.push(n) });
    expect(res.statusCode).toBe(200);
    expect(res.headers['x-test']).toBe('yes');
    expect(res.got).toBe(BODY.length);
    expect(res.body.equals(BODY)).toBe(true);
    expect(filled.length).toBeGreaterThan(1);
    expect(filled).toEqual([...filled].sort((a, b) => a - b));
    expect(filled[filled.length - 1]).toBe(BODY.length);
  });

  it('fails as soon as the body goes past the buffer', async () => {
    const into = Buffer.alloc(1000);
    await expect(
      get('/', { onHead: () => ({ into, tooLong: (n) => new Error(`past at ${n}`) }) }),
    ).rejects.toThrow(/past at \d+/);
  });

  it('keeps the start of a long body when the head allows it (an error answer’s text)', async () => {
    const res = await get('/error', {
      onHead: (status) => {
        expect(status).toBe(503);
        return { into: Buffer.alloc(200), tooLong: () => undefined };
      },
    });
    expect(res.statusCode).toBe(503);
    expect(res.got).toBe(200);
    expect(res.body.equals(BODY.subarray(0, 200))).toBe(true);
  });

  it('ends with the error the head decides on', async () => {
    await expect(get('/', { onHead: () => new Error('refused by the head') })).rejects.toThrow(
      'refused by the head',
    );
  });

  it('ends with the error progress throws', async () => {
    await expect(
      get('/', {
        progress: () => {
          throw new Error('bad block');
        },
      }),
    ).rejects.toThrow('bad block');
  });

  it('ends with the signal’s reason, before or during the body', async () => {
    const ac = new AbortController();
    ac.abort(new Error('gave up early'));
    await expect(get('/', { signal: ac.signal })).rejects.toThrow('gave up early');
    const late = new AbortController();
    const p = get('/slow', {
      signal: late.signal,
      progress: () => late.abort(new Error('gave up mid-body')),
    });
    await expect(p).rejects.toThrow('gave up mid-body');
  });
});
