/**
 * A seed's raw files have upload slots of their own (ServedBlob.uploadSlots): planned piece requests
 * (`defer=1`) beyond them get 429 with Retry-After, which the node's seed source reports as busy (no
 * isolation); requests that are not planned are always served, and a slot is given back when its response
 * ends. Real block server on loopback, reads held by the test.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { isBusy, Priority } from '../../src/fetch/types.js';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { SeedBlockSource } from '../../src/p2p/seed-block-source.js';

const DIGEST = 'sha256:' + '6b'.repeat(32);
const DATA = Buffer.alloc(64 * 1024, 3);
const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

async function seedWithSlots(slots: number) {
  const gates: (() => void)[] = [];
  const provider: BlobProvider = {
    get: () =>
      Promise.resolve({
        size: DATA.length,
        uploadSlots: slots,
        read: async (o: number, l: number) => {
          await new Promise<void>((r) => gates.push(r));
          return DATA.subarray(o, o + l);
        },
      }),
  };
  const server = new BlockServer({ provider, clusterToken: 't' });
  const address = await server.listen('127.0.0.1:0');
  const open = () => gates.splice(0).forEach((g) => g());
  cleanup.push(async () => {
    open();
    await server.close();
  });
  const http = new HttpBlockClient('t', undefined, 'node-1');
  cleanup.push(() => http.close());
  const isolation = new Isolation({ baseMs: 60_000 });
  const src = new SeedBlockSource({ seeds: [address], repo: '', http, isolation, timeoutMs: 5000 });
  return { server, address, src, isolation, gates, open };
}

const blob = { digest: DIGEST, size: DATA.length };
const planned = { priority: Priority.Fill, planned: true };
const until = async (f: () => boolean) => {
  while (!f()) await new Promise((r) => setTimeout(r, 5));
};

describe("a seed's raw-file upload slots", () => {
  it('answers planned requests beyond its slots busy, serves the rest, and frees a slot when a response ends', async () => {
    const s = await seedWithSlots(2);
    const sig = new AbortController().signal;
    const first = [0, 1].map((i) => s.src.fetch(blob, i * 1024, 1024, sig, planned));
    await until(() => s.gates.length === 2);
    // a third planned request: busy, the seed is not isolated
    const err = await s.src.fetch(blob, 2048, 1024, sig, planned).catch((e: unknown) => e);
    expect(isBusy(err)).toBe(true);
    expect(s.isolation.isolated(s.address)).toBe(false);
    expect(s.server.counters.busy).toBe(1);
    // a request that is not planned (a node that waited long enough) is served anyway
    const unplanned = s.src.fetch(blob, 4096, 1024, sig, { priority: Priority.Fill });
    await until(() => s.gates.length === 3);
    s.open();
    expect((await Promise.all([...first, unplanned])).map((b) => b.length)).toEqual([1024, 1024, 1024]);
    // the slots are free again
    const again = s.src.fetch(blob, 2048, 1024, sig, planned);
    await until(() => s.gates.length === 1);
    s.open();
    expect((await again).length).toBe(1024);
    expect(s.server.counters.busy).toBe(1);
  });
});
