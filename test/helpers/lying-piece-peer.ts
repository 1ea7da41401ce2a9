/**
 * A lying cluster member for raw files (`dfnode get`, the registry mirror): a real P2pNode in this process
 * that holds every piece of a file corrupted, joins the file's swarm and is listed by the seed's tracker
 * before this resolves.
 */
import { join } from 'node:path';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { loadConfig } from '../../src/config.js';
import { PieceLayout, type PieceTable } from '../../src/mirror/piece-table.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { trackerAddress } from '../../src/p2p/rendezvous.js';
import { TrackerClient } from '../../src/p2p/tracker-service.js';
import { flipBits } from './bytes.js';

export interface LyingPiecePeer {
  node: P2pNode;
  stop(): Promise<void>;
}

export async function startLyingPiecePeer(opts: {
  dir: string;
  seed: string;
  token: string;
  data: Buffer;
  table: PieceTable;
}): Promise<LyingPiecePeer> {
  const { table, data, seed, token } = opts;
  const cfg = loadConfig({
    env: {},
    flags: { p2p: { seeds: [seed], clusterToken: token, listen: '127.0.0.1:0', announceIntervalMs: 200 } },
  });
  const node = new P2pNode({ config: cfg });
  const undo: (() => unknown)[] = [];
  const stop = async () => {
    while (undo.length) await undo.pop()!();
  };
  try {
    await node.start();
    undo.push(() => node.close());
    const layout = new PieceLayout(table.size, table.pieceSize);
    const cache = await BlobCache.open({
      dir: join(opts.dir, 'liar-cache'),
      digest: table.digest,
      size: table.size,
    });
    undo.push(() => cache.close());
    const { blockCount, tocOffset } = layout.cacheLayout;
    await cache.setLayout(blockCount, tocOffset);
    for (let u = 0; u < layout.units; u++) {
      const lie = Buffer.from(data.subarray(layout.offset(u), layout.offset(u) + layout.length(u)));
      flipBits(lie, 1000);
      await cache.write(u, layout.offset(u), lie);
    }
    const member = node.joinUnits({ blob: { digest: table.digest, size: table.size }, layout, cache });
    undo.push(() => member.leave());
    // the tracker names the liar before anyone asks
    const tracker = new TrackerClient(trackerAddress(seed), token, 5000);
    undo.push(() => tracker.close());
    for (let i = 0; ; i++) {
      const a = await tracker.lookup({
        blob: table.digest,
        peer_id: 'test',
        want_bitmap: new Uint8Array(Math.ceil(layout.units / 8)).fill(0xff),
        max_peers: 8,
      });
      if (a.holders?.some((x) => x.peer_id === node.id)) break;
      if (i > 100) throw new Error('the liar never showed up in the tracker');
      await new Promise((r) => setTimeout(r, 50));
    }
    return { node, stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
