/**
 * The seed tier's policy on loopback HTTP seeds: slow is not down (fill retries the same seed, a blocked
 * read moves on to the registry, three timeouts in a row isolate a hung seed), a refused connection
 * moves on to the next seed at once, a wrong token or a deferral are not faults.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { isDfError } from '../../src/errors.js';
import { isDeferred, isSourceUnavailable, Priority } from '../../src/fetch/types.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { RegistryFallback } from '../../src/p2p/registry-fallback.js';
import { rankSeeds } from '../../src/p2p/rendezvous.js';
import { SeedBlockSource } from '../../src/p2p/seed-block-source.js';
import { LoopbackServers } from '../helpers/loopback.js';

const blob = { digest: 'sha256:' + 'cd'.repeat(32), size: 1 << 20 };
const servers = new LoopbackServers();
const clients: HttpBlockClient[] = [];
afterEach(async () => {
  await servers.closeAll();
  for (const c of clients.splice(0)) await c.close();
});

/** A seed that answers each request with `answer(n)` (n = 0, 1, ...): a status, or 'hang'. */
async function fakeSeed(
  answer: (n: number) => number | 'hang',
): Promise<{ addr: string; hits: () => number; close: () => void }> {
  let n = 0;
  const { server, addr } = await servers.serve((req, res) => {
    const a = answer(n++);
    if (a === 'hang') return;
    const len = Number(new URL(req.url!, 'http://x').searchParams.get('length'));
    if (a === 200) res.writeHead(200, { 'content-length': len }).end(Buffer.alloc(len, 1));
    else res.writeHead(a).end('no');
  });
  return { addr, hits: () => n, close: () => void server.close() };
}

function source(seeds: string[], isolation = new Isolation({ baseMs: 60_000 })) {
  const http = new HttpBlockClient('token', undefined, 'me');
  clients.push(http);
  const fallback = new RegistryFallback();
  const refused: string[] = [];
  const src = new SeedBlockSource({
    seeds,
    repo: 'example.com/r',
    http,
    isolation,
    timeoutMs: 100,
    fallback,
    onUnauthorized: (s) => refused.push(s),
  });
  return { src, isolation, fallback, refused };
}

const sig = () => new AbortController().signal;

describe('seed tier policy', () => {
  it('a seed that answers but has nothing (403 refused registry, 404, 413) is not down: no isolation', async () => {
    for (const status of [403, 404, 413]) {
      const seed = await fakeSeed(() => status);
      const { src, isolation } = source([seed.addr]);
      await expect(src.fetch(blob, 0, 100, sig(), { priority: Priority.Blocked })).rejects.toSatisfy(
        isSourceUnavailable,
      );
      expect(isolation.isolated(seed.addr), `after HTTP ${status}`).toBe(false);
      // and it is asked again for the next range
      await src.fetch(blob, 100, 100, sig()).catch(() => undefined);
      expect(seed.hits()).toBe(2);
    }
  });

  it('a slow seed: fill retries it later, a blocked read goes on to the registry, three timeouts isolate it', async () => {
    const seed = await fakeSeed(() => 'hang');
    const { src, isolation, fallback } = source([seed.addr]);
    // background fill: the timeout comes back as such (the fetcher retries later), the seed stays in use
    await expect(src.fetch(blob, 0, 100, sig(), { priority: Priority.Fill })).rejects.toSatisfy((e) =>
      isDfError(e, 'TIMEOUT'),
    );
    expect(isolation.isolated(seed.addr)).toBe(false);
    // a blocked read: unavailable (the registry next, counted as seed_timeout), the seed still not down
    await expect(src.fetch(blob, 0, 100, sig(), { priority: Priority.Blocked })).rejects.toSatisfy(
      isSourceUnavailable,
    );
    expect(fallback.take(blob.digest, 0, 100)).toBe('seed_timeout');
    expect(isolation.isolated(seed.addr)).toBe(false);
    // the third timeout in a row: hung, isolated, the tier has no seed left
    await expect(src.fetch(blob, 0, 100, sig(), { priority: Priority.Fill })).rejects.toSatisfy(
      isSourceUnavailable,
    );
    expect(isolation.isolated(seed.addr)).toBe(true);
    expect(seed.hits()).toBe(3);
  });

  it('a seed that refuses connections is down at once and the next one serves; deferrals and 401s are not faults', async () => {
    const good = await fakeSeed((n) => (n === 0 ? 409 : 200));
    const closed = await fakeSeed(() => 200);
    const deadAddr = closed.addr;
    closed.close();
    await new Promise((r) => setTimeout(r, 20));
    const seeds = [deadAddr, good.addr];
    // a blob whose first seed in rendezvous order is the dead one
    let b = blob;
    for (let i = 0; rankSeeds(b.digest, seeds)[0] !== deadAddr; i++)
      b = { ...blob, digest: 'sha256:' + i.toString(16).padStart(64, '0') };
    const { src, isolation } = source(seeds);
    // a planned fill run: the dead seed is isolated, the next one defers it (passed on as such)
    await expect(src.fetch(b, 0, 64, sig(), { priority: Priority.Fill, planned: true })).rejects.toSatisfy(
      isDeferred,
    );
    expect(isolation.isolated(deadAddr)).toBe(true);
    expect(isolation.isolated(good.addr)).toBe(false);
    // then it serves; the dead seed is not asked again while isolated
    const data = await src.fetch(b, 0, 64, sig(), { priority: Priority.Fill });
    expect(data.length).toBe(64);
    expect(isolation.strikes(deadAddr)).toBe(1);
    expect(good.hits()).toBe(2);

    // a seed that refuses the token: skipped like a down seed (the registry serves), reported, not isolated
    const strict = await fakeSeed(() => 401);
    const t = source([strict.addr]);
    await expect(t.src.fetch(blob, 0, 64, sig(), { priority: Priority.Fill })).rejects.toSatisfy(
      isSourceUnavailable,
    );
    expect(t.refused).toEqual([strict.addr]);
    expect(t.isolation.isolated(strict.addr)).toBe(false);
  });
});
