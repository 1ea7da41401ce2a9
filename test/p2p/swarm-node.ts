// A P2pNode of the tracker tests: started with one seed (its tracker over HTTP, or over gRPC as with
// DFNODE_TRACKER_GRPC=1), and joining the swarm of a raw blob with one unit already in its cache (its first
// announce names that unit). Both stop, and the environment is restored, with `cleanups`.
import { join } from 'node:path';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { loadConfig } from '../../src/config.js';
import type { PieceLayout } from '../../src/mirror/piece-table.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';

export async function startNode(o: {
  seed: string;
  token: string;
  announceIntervalMs: number;
  viaGrpc: boolean;
  cleanups: Array<() => unknown>;
}): Promise<P2pNode> {
  const before = process.env.DFNODE_TRACKER_GRPC;
  process.env.DFNODE_TRACKER_GRPC = o.viaGrpc ? '1' : '0';
  o.cleanups.push(() => {
    if (before === undefined) delete process.env.DFNODE_TRACKER_GRPC;
    else process.env.DFNODE_TRACKER_GRPC = before;
  });
  const node = new P2pNode({
    config: loadConfig({
      env: {},
      flags: {
        p2p: {
          seeds: [o.seed],
          clusterToken: o.token,
          listen: '127.0.0.1:0',
          announceIntervalMs: o.announceIntervalMs,
        },
      },
    }),
  });
  await node.start();
  o.cleanups.push(() => node.close());
  return node;
}

export async function joinWithUnit(
  node: P2pNode,
  o: { dir: string; digest: string; layout: PieceLayout; unit: number; cleanups: Array<() => unknown> },
): Promise<void> {
  const { layout, unit } = o;
  const cache = await BlobCache.open({ dir: join(o.dir, 'cache'), digest: o.digest, size: layout.size });
  o.cleanups.push(() => cache.close());
  await cache.setLayout(layout.cacheLayout.blockCount, layout.cacheLayout.tocOffset);
  await cache.write(unit, layout.offset(unit), Buffer.alloc(layout.length(unit), 7));
  const member = node.joinUnits({ blob: { digest: o.digest, size: layout.size }, layout, cache });
  o.cleanups.push(() => member.leave());
  await member.announced;
}
