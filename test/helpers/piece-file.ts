import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { BlobCache } from '../../src/cache/blob-cache.js';
import type { CacheManager } from '../../src/cache/cache-manager.js';
import { PieceHasher, PieceLayout } from '../../src/mirror/piece-table.js';
import { tempDir } from './temp.js';

/**
 * A random raw file of `pieces` pieces of `pieceSize` bytes (the last one 99 bytes short), its piece table,
 * and `open()`: a fresh BlobCache for it with one unit per piece (closed and removed by `cleanups`).
 */
export async function randomPieceFile(cleanups: (() => unknown)[], pieceSize: number, pieces = 8) {
  const data = randomBytes(pieces * pieceSize - 99);
  const h = new PieceHasher(pieceSize);
  h.update(data);
  const table = h.finish();
  const layout = new PieceLayout(table.size, pieceSize);
  const { dir, cleanup } = await tempDir('dfnode-pieces-');
  cleanups.push(cleanup);
  const open = async () => {
    const cache = await BlobCache.open({ dir: join(dir, 'c'), digest: table.digest, size: table.size });
    await cache.setLayout(layout.cacheLayout.blockCount, layout.cacheLayout.tocOffset);
    cleanups.push(() => cache.close());
    return cache;
  };
  return { data, table, layout, open };
}

/** The piece size seeds cut files of a few MiB into before session 27 (pieceSizeFor's old smallest). */
export const OLD_PIECE = 1 << 20;

/**
 * Opens `b`'s cache in `caches` as a node or seed of the old piece size left it when restarted mid-fetch:
 * that layout, its first piece present. The caller releases it (or keeps it open, as a reader would).
 */
export async function halfHeldUnderOldPieces(caches: CacheManager, digest: string, b: Buffer) {
  const c = await caches.open({ digest, size: b.length });
  const old = new PieceLayout(b.length, OLD_PIECE).cacheLayout;
  await c.setLayout(old.blockCount, old.tocOffset);
  await c.write(0, 0, b.subarray(0, OLD_PIECE));
  await c.flush();
  return c;
}
