/**
 * The block server tells a served blob whether each range read for a node reached it (ServedBlob.delivered)
 * or not (undelivered: an error answer, or the node went away mid-response). The seed's tracker keeps units
 * pending at the receiver while the answer is on its way, and counts the pending TTL from its delivery.
 * Real block server and client on loopback.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { Priority } from '../../src/fetch/types.js';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { SeedBlockSource } from '../../src/p2p/seed-block-source.js';

const DIGEST = 'sha256:' + '7c'.repeat(32);
const DATA = Buffer.alloc(256 * 1024, 5);
const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0).reverse()) await f();
});

describe('delivery of a seed answer', () => {
  it('reports a whole answer as delivered, and an error answer or an abandoned one as undelivered', async () => {
    const calls: string[] = [];
    let mode: 'ok' | 'fail' | 'hold' = 'ok';
    const gates: (() => void)[] = [];
    const provider: BlobProvider = {
      get: () =>
        Promise.resolve({
          size: DATA.length,
          read: async (o: number, l: number) => {
            if (mode === 'fail') throw DfError.notFound('the registry lost it');
            if (mode === 'hold') {
              // the first half goes out, the rest never comes
              return [
                Promise.resolve(DATA.subarray(o, o + l / 2)),
                new Promise<Buffer>((r) => gates.push(() => r(DATA.subarray(o + l / 2, o + l)))),
              ];
            }
            return DATA.subarray(o, o + l);
          },
          delivered: (o: number, l: number, peer: string) => calls.push(`delivered ${o}+${l} ${peer}`),
          undelivered: (o: number, l: number, peer: string) => calls.push(`undelivered ${o}+${l} ${peer}`),
        }),
    };
    const server = new BlockServer({ provider, clusterToken: 't' });
    const address = await server.listen('127.0.0.1:0');
    cleanup.push(async () => {
      gates.splice(0).forEach((g) => g());
      await server.close();
    });
    const http = new HttpBlockClient('t', undefined, 'node-1');
    cleanup.push(() => http.close());
    const src = new SeedBlockSource({
      seeds: [address],
      repo: '',
      http,
      isolation: new Isolation(),
      timeoutMs: 5000,
    });
    const blob = { digest: DIGEST, size: DATA.length };
    const settled = async (n: number) => {
      for (let i = 0; i < 200 && calls.length < n; i++) await new Promise((r) => setTimeout(r, 5));
      return calls.slice(0, n);
    };

    const got = await src.fetch(blob, 0, 65536, new AbortController().signal, { priority: Priority.Fill });
    expect(got.length).toBe(65536);
    expect(await settled(1)).toEqual(['delivered 0+65536 node-1']);

    mode = 'fail';
    await expect(
      src.fetch(blob, 65536, 65536, new AbortController().signal, { priority: Priority.Fill }),
    ).rejects.toThrow();
    expect((await settled(2))[1]).toBe('undelivered 65536+65536 node-1');

    mode = 'hold';
    const ac = new AbortController();
    const held = src
      .fetch(blob, 131072, 65536, ac.signal, { priority: Priority.Fill })
      .catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 100));
    ac.abort(new Error('the node gave up'));
    await held;
    expect((await settled(3))[2]).toBe('undelivered 131072+65536 node-1');
    expect(calls.length).toBe(3);
  });
});
