/**
 * Upload slots (p2p.uploadSlots): a node serves at most that many planned fill runs (`fill=1`) at once and
 * refuses more at once with 429, while reads a container waits on are always served. The asking node
 * takes a refusal as "busy", not as a failure: the holder is not isolated nor dropped from the view, and
 * fill runs go to other holders for a moment. Real block servers on loopback, reads held by the test.
 */
import { once } from 'node:events';
import { connect } from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { BlobCache } from '../../src/cache/blob-cache.js';
import { Bitmap } from '../../src/cache/bitmap.js';
import { isBusy, Priority } from '../../src/fetch/types.js';
import { PieceLayout } from '../../src/mirror/piece-table.js';
import { ensureNativeAddon } from '../../native/build-addon.js';
import { CLUSTER_TOKEN_HEADER } from '../../src/p2p/auth.js';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { PeerBlockSource } from '../../src/p2p/peer-block-source.js';
import { PeerView, type Holder } from '../../src/p2p/peer-view.js';
import { requireConditions } from '../helpers/require.js';

const KiB = 1024;
const buildProblem = ensureNativeAddon();
const noAddon = requireConditions({ [`native addons built (${buildProblem ?? ''})`]: !buildProblem });
const DIGEST = 'sha256:' + '5a'.repeat(32);
const DATA = Buffer.alloc(256 * KiB, 7);
const PIECE = 64 * KiB;

function heldProvider() {
  const gates: (() => void)[] = [];
  let reading = 0;
  const provider: BlobProvider = {
    get: async () => ({
      size: DATA.length,
      read: async (o: number, l: number) => {
        reading++;
        await new Promise<void>((r) => gates.push(r));
        reading--;
        return DATA.subarray(o, o + l);
      },
    }),
  };
  return { provider, gates, reading: () => reading, open: () => gates.splice(0).forEach((g) => g()) };
}

describe('upload slots', () => {
  const cleanup: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const f of cleanup.splice(0).reverse()) await f();
  });

  async function holder(slots: number, slotWaitMs?: number) {
    const h = heldProvider();
    const server = new BlockServer({
      provider: h.provider,
      clusterToken: 't',
      uploadSlots: slots,
      slotWaitMs,
    });
    const address = await server.listen('127.0.0.1:0');
    cleanup.push(async () => {
      h.open();
      await server.close();
    });
    return { ...h, server, address };
  }
  function client() {
    const c = new HttpBlockClient('t');
    cleanup.push(() => c.close());
    return c;
  }
  const signal = () => AbortSignal.timeout(20_000);

  it('refuses fill runs beyond the slots with 429, never a read a container waits on', async () => {
    const a = await holder(1);
    const c = client();
    const first = c.get(a.address, DIGEST, 0, PIECE, signal(), { fill: '1' });
    await vi.waitFor(() => expect(a.reading()).toBe(1));
    const second = await c.get(a.address, DIGEST, PIECE, PIECE, signal(), { fill: '1' }).catch((e) => e);
    expect(isBusy(second)).toBe(true);
    expect(String(second)).toMatch(/429 busy: all 1 upload slots are taken/);
    expect(a.server.counters.busy).toBe(1);
    // an on-demand read is served beside the fill run
    const demand = c.get(a.address, DIGEST, 2 * PIECE, PIECE, signal());
    await vi.waitFor(() => expect(a.reading()).toBe(2));
    a.open();
    expect((await first).length).toBe(PIECE);
    expect((await demand).length).toBe(PIECE);
    // the slot is free again
    const third = c.get(a.address, DIGEST, PIECE, PIECE, signal(), { fill: '1' });
    await vi.waitFor(() => expect(a.reading()).toBe(1));
    a.open();
    expect((await third).length).toBe(PIECE);
    expect(a.server.counters.busy).toBe(1);
  });

  it.skipIf(noAddon.skip)(
    "a fill run's slot stays taken while its answer waits in the socket's send queue",
    async () => {
      // the first asker sends its request and reads nothing more: the answer (256 KiB) is handed to the
      // kernel, whose buffers hold it, so the server's send is done while the bytes have not left
      const provider: BlobProvider = {
        get: async () => ({
          size: DATA.length,
          read: async (o: number, l: number) => DATA.subarray(o, o + l),
        }),
      };
      const asked = async (slotTailBytes: number) => {
        const server = new BlockServer({ provider, clusterToken: 't', uploadSlots: 1, slotTailBytes });
        const address = await server.listen('127.0.0.1:0');
        cleanup.push(() => server.close());
        const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.split(':').pop())];
        const slow = connect({ host, port });
        cleanup.push(async () => void slow.destroy());
        await once(slow, 'connect');
        slow.write(
          `GET /blobs/${DIGEST}?offset=0&length=${DATA.length}&fill=1 HTTP/1.1\r\nhost: x\r\n` +
            `${CLUSTER_TOKEN_HEADER}: t\r\n\r\n`,
        );
        await vi.waitFor(() => expect(server.counters.bytes).toBe(DATA.length));
        await new Promise((r) => setTimeout(r, 100));
        const second = await client()
          .get(address, DIGEST, 0, PIECE, signal(), { fill: '1' })
          .catch((e) => e);
        return { server, address, slow, second };
      };
      // as before: the slot was free once the kernel took the answer
      const before = await asked(Infinity);
      expect(Buffer.isBuffer(before.second)).toBe(true);
      const now = await asked(64 * KiB);
      expect(isBusy(now.second)).toBe(true);
      // the asker reads its answer: the slot is free once the rest has left
      let got = 0;
      now.slow.on('data', (d: Buffer) => (got += d.length));
      await vi.waitFor(() => expect(got).toBeGreaterThan(DATA.length));
      const c = client();
      await vi.waitFor(async () => {
        const third = await c.get(now.address, DIGEST, PIECE, PIECE, signal(), { fill: '1' });
        expect(third.length).toBe(PIECE);
      });
    },
  );

  it('a fill run that finds the slots taken waits a moment for one, and is served when it frees', async () => {
    const a = await holder(1, 10_000);
    const c = client();
    const first = c.get(a.address, DIGEST, 0, PIECE, signal(), { fill: '1' });
    await vi.waitFor(() => expect(a.reading()).toBe(1));
    const second = c.get(a.address, DIGEST, PIECE, PIECE, signal(), { fill: '1' });
    // one run waits (SLOT_WAITERS): a third is refused at once
    const third = await c.get(a.address, DIGEST, 2 * PIECE, PIECE, signal(), { fill: '1' }).catch((e) => e);
    expect(isBusy(third)).toBe(true);
    expect(a.server.counters.busy).toBe(1);
    expect(a.reading()).toBe(1);
    // the first answer leaves: its slot goes to the waiting run
    a.open();
    expect((await first).length).toBe(PIECE);
    await vi.waitFor(() => expect(a.reading()).toBe(1));
    a.open();
    expect((await second).length).toBe(PIECE);
    expect(a.server.counters.busy).toBe(1);
  });

  it('a waiting fill run whose asker went away does not keep the slot', async () => {
    const a = await holder(1, 10_000);
    const c = client();
    const first = c.get(a.address, DIGEST, 0, PIECE, signal(), { fill: '1' });
    await vi.waitFor(() => expect(a.reading()).toBe(1));
    const gone = new AbortController();
    const waiting = c.get(a.address, DIGEST, PIECE, PIECE, gone.signal, { fill: '1' }).catch((e) => e);
    await new Promise((r) => setTimeout(r, 50));
    expect(a.server.fillRuns).toEqual({ taken: 1, waiting: 1 });
    gone.abort();
    await waiting;
    await vi.waitFor(() => expect(a.server.fillRuns.waiting).toBe(0));
    a.open();
    expect((await first).length).toBe(PIECE);
    // the slot is free for the next asker (the one that left was given it and gave it back)
    const next = c.get(a.address, DIGEST, 2 * PIECE, PIECE, signal(), { fill: '1' });
    await vi.waitFor(() => expect(a.reading()).toBe(1));
    a.open();
    expect((await next).length).toBe(PIECE);
    expect(a.server.counters.busy).toBe(0);
  });

  it('without slots (a seed) serves every fill run', async () => {
    const a = await holder(0);
    const c = client();
    const runs = [0, 1, 2, 3].map((i) => c.get(a.address, DIGEST, i * PIECE, PIECE, signal(), { fill: '1' }));
    await vi.waitFor(() => expect(a.reading()).toBe(4));
    a.open();
    for (const r of await Promise.all(runs)) expect(r.length).toBe(PIECE);
    expect(a.server.counters.busy).toBe(0);
  });

  it('a busy holder is planned around for a moment, not isolated nor dropped', async () => {
    const a = await holder(1);
    const b = await holder(1);
    const other = client();
    // another node holds A's only slot
    const theirs = other.get(a.address, DIGEST, 0, PIECE, signal(), { fill: '1' });
    await vi.waitFor(() => expect(a.reading()).toBe(1));

    const layout = new PieceLayout(DATA.length, PIECE);
    const view = new PeerView({ digest: DIGEST, size: DATA.length }, layout, {} as BlobCache);
    const all = new Uint8Array(1).fill(0x0f);
    const h = (id: string, address: string): Holder => ({
      id,
      address,
      zone: '',
      load: 0,
      failures: 0,
      bits: Bitmap.fromBits(all, layout.units),
    });
    const A = h('A', a.address);
    const B = h('B', b.address);
    const isolation = new Isolation();
    const failures: string[] = [];
    const src = new PeerBlockSource({
      view: () => view,
      refresh: () => undefined,
      http: client(),
      isolation,
      reportFailure: (id) => failures.push(id),
      zone: '',
      timeoutMs: 10_000,
    });
    const fill = { priority: Priority.Fill, planned: true };

    view.holders = [A];
    const refused = await src.fetch(view.blob, PIECE, PIECE, signal(), fill).catch((e) => e);
    expect(isBusy(refused)).toBe(true);
    expect(isolation.isolated('A')).toBe(false);
    expect(failures).toEqual([]);
    expect(view.holders).toEqual([A]);
    expect(src.isFull('A')).toBe(true);

    // the next fill run goes to B, though A is listed first
    view.holders = [A, B];
    const run = src.fetch(view.blob, PIECE, PIECE, signal(), fill);
    await vi.waitFor(() => expect(b.reading()).toBe(1));
    expect(a.reading()).toBe(1);
    b.open();
    expect((await run).length).toBe(PIECE);

    // a read a container waits on still goes to A (and A serves it beside the fill run)
    view.holders = [A];
    const demand = src.fetch(view.blob, 2 * PIECE, PIECE, signal(), { priority: Priority.Blocked });
    await vi.waitFor(() => expect(a.reading()).toBe(2));
    a.open();
    expect((await demand).length).toBe(PIECE);
    expect((await theirs).length).toBe(PIECE);
    expect(isolation.isolated('A')).toBe(false);
  });
});
