// A P2pNode joining the swarm of a raw blob of `layout` with one unit already in its cache (its first
// announce names that unit): shared by the tracker tests.
import { join } from 'node:path';
import { BlobCache } from '../../src/cache/blob-cache.js';
import type { PieceLayout } from '../../src/mirror/piece-table.js';
import type { P2pNode } from '../../src/p2p/p2p-node.js';

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
