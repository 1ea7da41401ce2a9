/**
 * Lookups carried by announces (AnnounceRequest.lookup_max_peers, answerAnnounce): one tracker call for
 * both, over HTTP and gRPC alike, counted apart by the seed; a malformed one refused before the announce
 * changes anything; and a node that sends its lookups that way, or on their own to a tracker that predates
 * it. Real servers and a real P2pNode on loopback.
 */
import * as grpc from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { NodeMetrics } from '../../src/daemon/metrics.js';
import { PieceLayout } from '../../src/mirror/piece-table.js';
import { BlockServer } from '../../src/p2p/block-server.js';
import { HttpTracker } from '../../src/p2p/tracker-http.js';
import {
  serveTracker,
  TrackerClient,
  trackerServiceConstructor,
  type Tracker,
} from '../../src/p2p/tracker-service.js';
import { TrackerState, type AnnounceMsg, type LookupMsg } from '../../src/p2p/tracker-state.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';
import { waitFor } from '../helpers/node.js';
import { joinWithUnit, startNode } from './swarm-node.js';
import { tempDir } from '../helpers/temp.js';

const TOKEN = 'folded-lookup-token';
const BLOB = 'sha256:' + '5e'.repeat(32);
const cleanups = cleanupsAfterEach();

const announce = (peer: string, port: number, bits: number[], more: Partial<AnnounceMsg> = {}) => ({
  blob: BLOB,
  units: 16,
  peer_id: peer,
  address: `127.0.0.1:${port}`,
  full: true,
  bitmap: Buffer.from(bits),
  ...more,
});

async function trackers(state: TrackerState) {
  const blocks = new BlockServer({
    provider: { get: async () => undefined },
    clusterToken: TOKEN,
    tracker: state,
  });
  const address = await blocks.listen('127.0.0.1:0');
  const g = await serveTracker(state, '127.0.0.1:0', TOKEN);
  const http = new HttpTracker(address, TOKEN, 5000, undefined, (): Tracker => {
    throw new Error('fell back to gRPC');
  });
  const viaGrpc = new TrackerClient(g.address, TOKEN, 5000);
  cleanups.push(
    () => blocks.close(),
    () => g.stop(),
    () => http.close(),
    () => viaGrpc.close(),
  );
  return { http, grpc: viaGrpc };
}

const holders = (a: { holders: { peer_id: string; bitmap: Uint8Array }[] } | null | undefined) =>
  (a?.holders ?? []).map((h) => [h.peer_id, Buffer.from(h.bitmap).toString('hex')]);

describe('lookups carried by announces', () => {
  it('an announce that asks for holders gets the lookup answer, over HTTP and gRPC alike, counted apart', async () => {
    const state = new TrackerState();
    const t = await trackers(state);
    await t.http.announce(announce('holder-a', 4001, [0xff, 0x0f]));
    const want = { lookup_want: Buffer.from([0xff, 0xff]), lookup_max_peers: 8 };
    for (const [name, c, port] of [
      ['asker-http', t.http, 4002],
      ['asker-grpc', t.grpc, 4003],
    ] as const) {
      const r = await c.announce(announce(name, port, [0, 0], want));
      expect(r.need_full).toBe(false);
      // made after the announce: the asker is in the swarm, and not among the holders it is told of
      expect(holders(r.lookup)).toEqual([['holder-a', 'ff0f']]);
      expect(r.lookup?.units).toBe(16);
      const apart = state.lookup({
        blob: BLOB,
        peer_id: name,
        want: [],
        max_peers: 8,
        zone: '',
      } as LookupMsg);
      expect(r.lookup?.peers).toBe(apart.peers);
    }
    // without the fields, and with a leave, no lookup is made
    expect(
      (await t.http.announce(announce('holder-a', 4001, [0xff, 0x0f]))).lookup ?? undefined,
    ).toBeUndefined();
    const left = await t.http.announce(announce('asker-http', 4002, [0, 0], { ...want, leave: true }));
    expect(left.lookup ?? undefined).toBeUndefined();
    // two carried, two asked of the state directly above
    expect(state.counters).toMatchObject({ announces: 5, lookups: 4, carriedLookups: 2 });
    const m = new NodeMetrics({ defaultMetrics: false });
    m.onScrape(() =>
      m.publishSeed({ registryRequests: 0, bytes: {}, tracker: state.counters, handedBack: 0 }),
    );
    const text = await m.text();
    expect(text).toContain('dfnode_tracker_requests_total{method="announce"} 5');
    expect(text).toContain('dfnode_tracker_requests_total{method="lookup"} 2');
    expect(text).toContain('dfnode_tracker_requests_total{method="lookup_in_announce"} 2');
  });

  it('a malformed lookup is refused before the announce changes anything', async () => {
    const state = new TrackerState();
    const t = await trackers(state);
    await t.http.announce(announce('holder-a', 4001, [0xff, 0x0f]));
    const bad = announce('stranger', 4009, [0xff, 0xff], {
      lookup_want: Buffer.alloc(300, 0xff),
      lookup_max_peers: 8,
    });
    await expect(t.http.announce(bad)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringContaining('a bitmap of 16 units has 2 bytes'),
    });
    await expect(t.grpc.announce(bad)).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringContaining('a bitmap of 16 units has 2 bytes'),
    });
    const a = state.lookup({ blob: BLOB, peer_id: 'x', want: [], max_peers: 8, zone: '' } as LookupMsg);
    expect(a.holders.map((h) => h.peer_id)).toEqual(['holder-a']);
    // a huge max_peers is bounded as a lookup's is
    const r = await t.http.announce(
      announce('asker', 4002, [0, 0], { lookup_want: Buffer.from([0xff, 0xff]), lookup_max_peers: 2 ** 31 }),
    );
    expect(holders(r.lookup)).toEqual([['holder-a', 'ff0f']]);
  });

  for (const [old, ticks] of [
    [false, true],
    [true, true],
    [false, false],
    [true, false],
  ] as const)
    it(
      (old
        ? 'a node asks a tracker that ignores lookups in announces on their own'
        : 'a node sends its lookups with its announces: no lookup call of its own') +
        (ticks ? ', again and again while it fills' : ', from its first announce on'),
      async () => {
        const { dir, cleanup } = await tempDir('dfnode-folded-');
        cleanups.push(cleanup);
        const layout = new PieceLayout(8 * 65536, 65536);
        const state = new TrackerState();
        state.announce({
          ...announce('holder-a', 4001, []),
          units: layout.units,
          bitmap: Buffer.alloc(Math.ceil(layout.units / 8), 0xff),
        } as AnnounceMsg);
        let seedAddress: string;
        if (old) {
          // a tracker that predates it: its Announce knows no lookup fields (gRPC, served by hand)
          const server = new grpc.Server();
          server.addService(trackerServiceConstructor().service, {
            Announce: (call: grpc.ServerUnaryCall<AnnounceMsg, unknown>, cb: grpc.sendUnaryData<unknown>) =>
              cb(null, state.announce(call.request)),
            Lookup: (call: grpc.ServerUnaryCall<LookupMsg, unknown>, cb: grpc.sendUnaryData<unknown>) =>
              cb(null, state.lookup(call.request)),
          });
          const port = await new Promise<number>((res, rej) =>
            server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) =>
              e ? rej(e) : res(p),
            ),
          );
          cleanups.push(() => new Promise<void>((r) => server.tryShutdown(() => r())));
          // the node asks the tracker on the seed's block port + 1
          seedAddress = `127.0.0.1:${port - 1}`;
        } else {
          const blocks = new BlockServer({
            provider: { get: async () => undefined },
            clusterToken: TOKEN,
            tracker: state,
          });
          seedAddress = await blocks.listen('127.0.0.1:0');
          cleanups.push(() => blocks.close());
        }
        // the old tracker is reached over gRPC (DFNODE_TRACKER_GRPC=1), the new one over HTTP
        const node = await startNode({
          seed: seedAddress,
          token: TOKEN,
          // without ticks, the lookup made on joining is the only one
          announceIntervalMs: ticks ? 100 : 600_000,
          viaGrpc: old,
          cleanups,
        });
        await joinWithUnit(node, { dir, digest: BLOB, layout, unit: 5, cleanups });
        // the ticks (every 100 ms) look up again every 250 ms while the blob is incomplete
        const want = ticks ? 4 : 1;
        await waitFor(
          `${want} lookups answered`,
          async () => node.counters.trackerAnswers >= want,
          10_000,
          20,
        );
        expect(state.counters.lookups).toBeGreaterThanOrEqual(want);
        expect(node.counters.trackerAnswers).toBeGreaterThanOrEqual(want);
        // joining took one call for the announce and the lookup, or one each
        if (!ticks) {
          await new Promise((r) => setTimeout(r, 300));
          expect(state.counters).toMatchObject({ announces: 2, lookups: 1 });
        }
        // holder-a was named to the node every time
        expect(node.counters.trackerEmpty).toBe(0);
        if (old) expect(state.counters.carriedLookups).toBe(0);
        else expect(state.counters.carriedLookups).toBe(state.counters.lookups);
      },
    );
});
