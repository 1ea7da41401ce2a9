/**
 * A tracker that refuses a node's calls (full, or a message it does not take) answers from a seed that is
 * up: the node counts the error and keeps the seed (its blocks and its tracker), over HTTP and over gRPC,
 * whose client now names those refusals as the HTTP one does. Real servers and a real P2pNode on loopback.
 */
import { describe, expect, it } from 'vitest';
import { PieceLayout } from '../../src/mirror/piece-table.js';
import { BlockServer } from '../../src/p2p/block-server.js';
import { listenPair } from '../../src/p2p/rendezvous.js';
import { serveTracker, TrackerClient } from '../../src/p2p/tracker-service.js';
import { TrackerState, type AnnounceMsg } from '../../src/p2p/tracker-state.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';
import { waitFor } from '../helpers/node.js';
import { tempDir } from '../helpers/temp.js';
import { joinWithUnit, startNode } from './swarm-node.js';

const TOKEN = 'tracker-refusals-token';
const BLOB = 'sha256:' + '7a'.repeat(32);
const cleanups = cleanupsAfterEach();

/**
 * A seed's block server and gRPC tracker over one TrackerState: by default one that takes no blob (every
 * announce is full).
 */
async function fullSeed(state = new TrackerState({ limits: { maxBlobs: 0 } })) {
  const blocks = new BlockServer({
    provider: { get: async () => undefined },
    clusterToken: TOKEN,
    tracker: state,
  });
  const pair = await listenPair('127.0.0.1:0', blocks, (a) => serveTracker(state, a, TOKEN));
  cleanups.push(
    () => blocks.close(),
    () => pair.tracker.stop(),
  );
  return pair;
}

describe('tracker refusals', () => {
  it('the gRPC client names a full tracker NO_SPACE and a refused message INVALID_ARGUMENT, as over HTTP', async () => {
    const pair = await fullSeed();
    const g = new TrackerClient(pair.tracker.address, TOKEN, 5000);
    cleanups.push(() => g.close());
    const announce = { blob: BLOB, units: 16, peer_id: 'p', address: '127.0.0.1:4001', full: true };
    await expect(g.announce({ ...announce, bitmap: Buffer.from([1, 0]) })).rejects.toMatchObject({
      code: 'NO_SPACE',
    });
    await expect(g.announce({ ...announce, bitmap: Buffer.from([1]) })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
    });
  });

  /** A node on a fresh seed over `state` (default: a tracker full for any blob), joined with one unit. */
  async function nodeOnSeed(viaGrpc: boolean, announceIntervalMs: number, state?: TrackerState) {
    const { dir, cleanup } = await tempDir('dfnode-refusals-');
    cleanups.push(cleanup);
    const pair = await fullSeed(state);
    const node = await startNode({ seed: pair.blocks, token: TOKEN, announceIntervalMs, viaGrpc, cleanups });
    await joinWithUnit(node, {
      dir,
      digest: BLOB,
      layout: new PieceLayout(4 * 65536, 65536),
      unit: 1,
      cleanups,
    });
    return { node, seed: pair.blocks };
  }

  for (const viaGrpc of [false, true])
    it(`a node whose tracker is full keeps its seed (${viaGrpc ? 'gRPC' : 'HTTP'})`, async () => {
      const { node, seed } = await nodeOnSeed(viaGrpc, 100);
      await waitFor('three tracker errors', async () => node.counters.trackerErrors >= 3, 5000, 20);
      expect(node.counters.trackerErrors).toBeGreaterThanOrEqual(3);
      expect(node.counters.seedsDown).toBe(0);
      expect(node.seedIsolation.isolated(seed)).toBe(false);
    });

  for (const viaGrpc of [false, true])
    it(`a tracker that refuses a node's announces (its blob's swarm full) still names holders to its lookups (${viaGrpc ? 'gRPC' : 'HTTP'})`, async () => {
      // one peer per blob, taken by holder-a: the node's announces (each carrying a lookup) are refused
      const state = new TrackerState({ limits: { maxPeersPerBlob: 1 } });
      state.announce({
        blob: BLOB,
        units: 4,
        peer_id: 'holder-a',
        address: '127.0.0.1:4001',
        full: true,
        bitmap: Buffer.from([0b1111]),
        zone: '',
        load: 0,
        added: [],
        leave: false,
        failed_peers: [],
      } as AnnounceMsg);
      // without ticks: the lookup made on joining is the only one
      const { node, seed } = await nodeOnSeed(viaGrpc, 600_000, state);
      await waitFor('a lookup answered', async () => node.counters.trackerAnswers >= 1, 5000, 20);
      // the lookup went on its own after the refused announce, and named holder-a
      expect(node.counters.trackerAnswers).toBe(1);
      expect(node.counters.trackerEmpty).toBe(0);
      expect(state.counters.lookups).toBe(1);
      expect(state.counters.carriedLookups).toBe(0);
      expect(node.counters.trackerErrors).toBeGreaterThanOrEqual(1);
      expect(node.seedIsolation.isolated(seed)).toBe(false);
    });
});
