/**
 * A flood of valid requests cannot make the block server hold more than its response budget: requests
 * beyond it wait (real listener on loopback, reads held open by the test), too many waiting get 503, and
 * a waiter whose client goes away gives its place back. Requests waiting for a seed's file still arriving
 * from its origin (ServedBlob.ready) hold no budget but are bounded the same way.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';

const MiB = 1024 * 1024;
const DIGEST = 'sha256:' + '77'.repeat(32);
const DATA = Buffer.alloc(8 * MiB, 5);

function heldProvider() {
  const gates: (() => void)[] = [];
  let reading = 0;
  let open = false;
  let most = 0;
  const provider: BlobProvider = {
    get: async () => ({
      size: DATA.length,
      read: async (o: number, l: number) => {
        most = Math.max(most, ++reading);
        if (!open) await new Promise<void>((r) => gates.push(r));
        reading--;
        return DATA.subarray(o, o + l);
      },
    }),
  };
  /** Lets every read through from now on (the test's end). */
  const openAll = () => {
    open = true;
    gates.splice(0).forEach((g) => g());
  };
  return { provider, gates, most: () => most, reading: () => reading, openAll };
}

describe('block server: response budget', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0)) await f();
  });

  async function start(h: ReturnType<typeof heldProvider>, maxQueuedRequests = 16) {
    const p = h.provider;
    const server = new BlockServer({
      provider: p,
      clusterToken: 't',
      maxRangeBytes: MiB,
      maxInflightBytes: 2 * MiB,
      maxQueuedRequests,
    });
    const address = await server.listen('127.0.0.1:0');
    const client = new HttpBlockClient('t');
    cleanup.push(async () => {
      h.openAll();
      await client.close();
      await server.close();
    });
    const get = (i: number, signal = AbortSignal.timeout(30_000)) =>
      client.get(address, DIGEST, i * MiB, MiB, signal);
    return { server, get };
  }

  /** Opens the held reads until `done` says so (each opened read lets a waiting request in). */
  async function openUntil(h: ReturnType<typeof heldProvider>, done: () => boolean): Promise<void> {
    while (!done()) {
      h.gates.splice(0).forEach((g) => g());
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  it('reads no more than the budget at once; the others wait, then all are served', async () => {
    const h = heldProvider();
    const { server, get } = await start(h);
    let settled = false;
    const all = Promise.all([0, 1, 2, 3].map((i) => get(i))).finally(() => (settled = true));
    await vi.waitFor(() => expect(h.reading() + server.waiting).toBe(4), { timeout: 10_000 });
    expect(h.reading()).toBe(2);
    await openUntil(h, () => settled);
    const got = await all;
    expect(got.every((b, i) => b.equals(DATA.subarray(i * MiB, (i + 1) * MiB)))).toBe(true);
    expect(h.most()).toBe(2);
  });

  it('answers 503 beyond the waiting requests allowed, and a client that leaves frees its place', async () => {
    const h = heldProvider();
    const { server, get } = await start(h, 1);
    const held = [get(0), get(1)];
    const ac = new AbortController();
    const leaving = get(2, ac.signal).catch((e: unknown) => e);
    await vi.waitFor(() => expect(server.waiting).toBe(1), { timeout: 10_000 });
    await expect(get(3)).rejects.toThrow(/HTTP 503/);
    ac.abort();
    await leaving;
    await vi.waitFor(() => expect(server.waiting).toBe(0), { timeout: 10_000 });
    let settled = false;
    const rest = Promise.all([...held, get(4)]).finally(() => (settled = true));
    await openUntil(h, () => settled);
    expect((await rest).map((b) => b.length)).toEqual([MiB, MiB, MiB]);
  });

  it('answers 503 beyond the requests allowed to wait for the origin; one that leaves frees its place', async () => {
    let waiting = 0;
    let arrive!: () => void;
    const arrived = new Promise<void>((r) => (arrive = r));
    const provider: BlobProvider = {
      get: () =>
        Promise.resolve({
          size: DATA.length,
          // a file whose bytes are still coming: every read waits for the test
          ready: async (_o: number, _l: number, signal: AbortSignal) => {
            waiting++;
            try {
              await Promise.race([
                arrived,
                new Promise((_r, reject) => signal.addEventListener('abort', () => reject(signal.reason))),
              ]);
            } finally {
              waiting--;
            }
          },
          read: (o: number, l: number) => Promise.resolve(DATA.subarray(o, o + l)),
        }),
    };
    const { get } = await start({ ...heldProvider(), provider }, 2);
    const ac = new AbortController();
    const held = get(0);
    const leaving = get(1, ac.signal).catch((e: unknown) => e);
    await vi.waitFor(() => expect(waiting).toBe(2), { timeout: 10_000 });
    await expect(get(2)).rejects.toThrow(/HTTP 503/);
    ac.abort();
    await leaving;
    await vi.waitFor(() => expect(waiting).toBe(1), { timeout: 10_000 });
    const next = get(3);
    await vi.waitFor(() => expect(waiting).toBe(2), { timeout: 10_000 });
    arrive();
    expect((await Promise.all([held, next])).map((b) => b.length)).toEqual([MiB, MiB]);
  });
});
