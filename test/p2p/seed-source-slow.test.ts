/**
 * A seed that is alive is not down (loopback HTTP seeds): a background-fill request that keeps receiving
 * bytes past its time limit completes; requests that time out while the seed is heard from (another
 * response arriving) do not isolate it; a seed that answers busy (429, or 503 with Retry-After) is busy
 * for fill, not "no seed is up" (which sends the range to the registry).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterEach, describe, expect, it } from 'vitest';
import { isDfError } from '../../src/errors.js';
import { isBusy, isSourceUnavailable, Priority } from '../../src/fetch/types.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { RegistryFallback } from '../../src/p2p/registry-fallback.js';
import { SeedBlockSource } from '../../src/p2p/seed-block-source.js';
import type { Timers } from '../../src/util/timers.js';
import { manualClock } from '../fetch/helpers.js';
import { LoopbackServers } from '../helpers/loopback.js';

const blob = { digest: 'sha256:' + 'ef'.repeat(32), size: 1 << 20 };
const servers = new LoopbackServers();
const clients: HttpBlockClient[] = [];
afterEach(async () => {
  await servers.closeAll();
  for (const c of clients.splice(0)) await c.close();
});

const serve = async (handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> =>
  (await servers.serve(handler)).addr;

const query = (req: IncomingMessage) => new URL(req.url!, 'http://x').searchParams;

function source(seed: string, timeoutMs: number, timers?: Timers) {
  const http = new HttpBlockClient('token', undefined, 'me');
  clients.push(http);
  const isolation = new Isolation({ baseMs: 60_000, ...(timers ? { timers } : {}) });
  const fallback = new RegistryFallback();
  const src = new SeedBlockSource({
    seeds: [seed],
    repo: 'example.com/r',
    http,
    isolation,
    timeoutMs,
    fallback,
    ...(timers ? { timers } : {}),
  });
  return { src, isolation, fallback };
}

/** A seed whose responses the test sends chunk by chunk: `held[i]` is the i-th request's response. */
async function heldSeed(answer: (offset: number) => boolean) {
  const held: ServerResponse[] = [];
  const addr = await serve((req, res) => {
    const q = query(req);
    if (!answer(Number(q.get('offset')))) return;
    res.writeHead(200, { 'content-length': Number(q.get('length')) });
    held.push(res);
  });
  return { addr, held };
}

/** Waits for `f()`; throws once `p` has settled without it (a request cut before the bytes arrived). */
const until = async (f: () => boolean, p?: Promise<unknown>) => {
  let settled = false;
  void p?.then(
    () => (settled = true),
    () => (settled = true),
  );
  while (!f()) {
    if (settled) throw new Error('the request ended first');
    await new Promise((r) => setTimeout(r, 2));
  }
};

const sig = () => new AbortController().signal;

describe('a seed that is alive is not down', () => {
  it('a fill request that keeps receiving bytes past its time limit completes', async () => {
    const clock = manualClock(); // the HTTP traffic is real; the request limits run on the test's clock
    const timers = clock.timers;
    const seed = await heldSeed(() => true);
    // 6554 bytes: a limit of 100 ms + 100 ms at the floor rate; stalled after 100 ms without a byte
    const { src, isolation } = source(seed.addr, 100, timers);
    let got = 0;
    const p = src.fetch(blob, 0, 6554, sig(), { priority: Priority.Fill, progress: (_d, n) => (got = n) });
    await until(() => seed.held.length === 1);
    // a chunk every 60 ms (of the test's clock), 420 ms in all: twice the limit
    for (let i = 1; i <= 7; i++) {
      seed.held[0]!.write(Buffer.alloc(900, 7));
      await until(() => got === i * 900, p);
      clock.advance(60);
    }
    seed.held[0]!.end(Buffer.alloc(6554 - 6300, 7));
    const data = await p;
    expect(data.length).toBe(6554);
    expect(data.every((b) => b === 7)).toBe(true);
    expect(isolation.isolated(seed.addr)).toBe(false);
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
    const clock = manualClock(); // the HTTP traffic is real; the request limits run on the test's clock
    const timers = clock.timers;
    // offset 0: a long response the test sends chunk by chunk; any other range: no answer (queued)
    const seed = await heldSeed((offset) => offset === 0);
    const { src, isolation, fallback } = source(seed.addr, 100, timers);
    let got = 0;
    const long = src.fetch(blob, 0, 8000, sig(), { priority: Priority.Fill, progress: (_d, n) => (got = n) });
    await until(() => seed.held.length === 1);
    let sent = 0;
    const chunk = async () => {
      seed.held[0]!.write(Buffer.alloc(500, 1));
      sent += 500;
      await until(() => got === sent, long);
    };
    for (let i = 1; i <= 4; i++) {
      // limit 100 ms + 2 ms; the long response gets a chunk every 52 ms meanwhile
      const short = src.fetch(blob, i * 8000, 100, sig(), { priority: Priority.Fill });
      await chunk();
      clock.advance(52);
      await chunk();
      clock.advance(52);
      await expect(short).rejects.toSatisfy((e) => isDfError(e, 'TIMEOUT'));
    }
    expect(isolation.isolated(seed.addr)).toBe(false);
    seed.held[0]!.end(Buffer.alloc(8000 - sent, 1));
    expect((await long).length).toBe(8000);
    // nothing was noted for the registry
    expect(fallback.take(blob.digest, 8000, 32_000)).toBe('retry');
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
