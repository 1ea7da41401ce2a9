/**
 * A seed that is alive is not down (loopback HTTP seeds): a background-fill request that keeps receiving
 * bytes past its time limit completes; requests that time out while the seed is heard from (another
 * response arriving) do not isolate it; a seed that answers busy (429, or 503 with Retry-After) is busy
 * for fill, not "no seed is up" (which sends the range to the registry).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { isDfError } from '../../src/errors.js';
import { isBusy, isSourceUnavailable, Priority } from '../../src/fetch/types.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { RegistryFallback } from '../../src/p2p/registry-fallback.js';
import { SeedBlockSource } from '../../src/p2p/seed-block-source.js';

const blob = { digest: 'sha256:' + 'ef'.repeat(32), size: 1 << 20 };
const servers: Server[] = [];
const clients: HttpBlockClient[] = [];
const timers: NodeJS.Timeout[] = [];
afterEach(async () => {
  for (const t of timers.splice(0)) clearInterval(t);
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
  for (const c of clients.splice(0)) await c.close();
});

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const s = createServer(handler);
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return `127.0.0.1:${(s.address() as AddressInfo).port}`;
}

/** Sends `len` bytes in `chunks` parts, one every `everyMs` (a response sharing a saturated uplink). */
function trickle(res: ServerResponse, len: number, chunks: number, everyMs: number): void {
  res.writeHead(200, { 'content-length': len });
  const part = Math.ceil(len / chunks);
  let sent = 0;
  const t = setInterval(() => {
    const n = Math.min(part, len - sent);
    res.write(Buffer.alloc(n, 7));
    sent += n;
    if (sent >= len) {
      clearInterval(t);
      res.end();
    }
  }, everyMs);
  timers.push(t);
}

const query = (req: IncomingMessage) => new URL(req.url!, 'http://x').searchParams;

function source(seed: string, timeoutMs: number) {
  const http = new HttpBlockClient('token', undefined, 'me');
  clients.push(http);
  const isolation = new Isolation({ baseMs: 60_000 });
  const fallback = new RegistryFallback();
  const src = new SeedBlockSource({
    seeds: [seed],
    repo: 'example.com/r',
    http,
    isolation,
    timeoutMs,
    fallback,
  });
  return { src, isolation, fallback };
}

const sig = () => new AbortController().signal;

describe('a seed that is alive is not down', () => {
  it('a fill request that keeps receiving bytes past its time limit completes', async () => {
    // 6554 bytes: a limit of 100 ms + 100 ms at the floor rate; the seed takes about 600 ms to send them
    const seed = await serve((req, res) => trickle(res, Number(query(req).get('length')), 12, 50));
    const { src, isolation } = source(seed, 100);
    const data = await src.fetch(blob, 0, 6554, sig(), { priority: Priority.Fill });
    expect(data.length).toBe(6554);
    expect(data.every((b) => b === 7)).toBe(true);
    expect(isolation.isolated(seed)).toBe(false);
  });

  it('a fill request that stalls is still cut, and three such timeouts with nothing heard isolate the seed', async () => {
    // the head and a first chunk, then nothing: the stall is a timeout (not counted: the seed was heard)
    const seed = await serve((req, res) => {
      res.writeHead(200, { 'content-length': Number(query(req).get('length')) });
      res.write(Buffer.alloc(10));
    });
    const { src, isolation } = source(seed, 100);
    await expect(src.fetch(blob, 0, 6554, sig(), { priority: Priority.Fill })).rejects.toSatisfy((e) =>
      isDfError(e, 'TIMEOUT'),
    );
    expect(isolation.isolated(seed)).toBe(false);
    // a seed that answers nothing at all: hung, isolated on the third timeout
    const silent = await serve(() => undefined);
    const s2 = source(silent, 50);
    for (let i = 0; i < 2; i++)
      await expect(s2.src.fetch(blob, 0, 100, sig(), { priority: Priority.Fill })).rejects.toSatisfy((e) =>
        isDfError(e, 'TIMEOUT'),
      );
    expect(s2.isolation.isolated(silent)).toBe(false);
    await expect(s2.src.fetch(blob, 0, 100, sig(), { priority: Priority.Fill })).rejects.toSatisfy(
      isSourceUnavailable,
    );
    expect(s2.isolation.isolated(silent)).toBe(true);
  });

  it('timeouts while another response from the seed is arriving do not make it down', async () => {
    // offset 0: a long response trickling in; any other range: no answer (queued behind the uplink)
    const seed = await serve((req, res) => {
      if (query(req).get('offset') === '0') trickle(res, 4000, 10, 40);
    });
    const { src, isolation, fallback } = source(seed, 60);
    const long = src.fetch(blob, 0, 4000, sig(), { priority: Priority.Fill });
    for (let i = 1; i <= 4; i++)
      await expect(src.fetch(blob, i * 4000, 100, sig(), { priority: Priority.Fill })).rejects.toSatisfy(
        (e) => isDfError(e, 'TIMEOUT'),
      );
    expect(isolation.isolated(seed)).toBe(false);
    expect((await long).length).toBe(4000);
    // nothing was noted for the registry
    expect(fallback.take(blob.digest, 4000, 16_000)).toBe('retry');
  });

  it('a seed that answers busy (429, or 503 with Retry-After) is busy for fill and not isolated', async () => {
    for (const [status, retry] of [
      [429, '1'],
      [503, '1'],
    ] as const) {
      const seed = await serve((_req, res) => res.writeHead(status, { 'retry-after': retry }).end('busy'));
      const { src, isolation, fallback } = source(seed, 100);
      const err = await src.fetch(blob, 0, 100, sig(), { priority: Priority.Fill }).catch((e: unknown) => e);
      expect(isBusy(err), `HTTP ${status}`).toBe(true);
      expect(isolation.isolated(seed)).toBe(false);
      // a blocked read goes on to the registry, noted as such
      await expect(src.fetch(blob, 0, 100, sig(), { priority: Priority.Blocked })).rejects.toSatisfy(
        (e) => isSourceUnavailable(e) && !isBusy(e),
      );
      expect(fallback.take(blob.digest, 0, 100)).toBe('seed_busy');
      expect(isolation.isolated(seed)).toBe(false);
    }
    // 503 without Retry-After: an error, the seed is down
    const broken = await serve((_req, res) => res.writeHead(503).end('broken'));
    const b = source(broken, 100);
    await expect(b.src.fetch(blob, 0, 100, sig(), { priority: Priority.Fill })).rejects.toSatisfy(
      isSourceUnavailable,
    );
    expect(b.isolation.isolated(broken)).toBe(true);
  });
});
