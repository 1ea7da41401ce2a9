import { EntryType } from '../blob/types.js';
import type { DirectTables, NativeAddon, Session } from './native-addon.js';
import type { CachedBlocks, DirectReadGate, DirectReadSource } from './types.js';

/**
 * Copies the block table and file extents of a TOC into typed arrays for native/direct_read.c, with the
 * units present now (and the blocks' SHA-256 unless `verify` is false). Undefined when the cache's layout is not this TOC's (not set yet, or another blob).
 */
export function directTables(src: DirectReadSource): DirectTables | undefined {
  const { toc, blocks } = src;
  if (blocks.unitCount !== toc.blockCount + 1) return undefined;
  const n = toc.blockCount;
  const streamOffsets = new Float64Array(n + 1);
  const blobOffsets = new Float64Array(n + 1);
  const codecs = new Uint8Array(n);
  const digests = src.verify === false ? undefined : new Uint8Array(n * 32);
  for (let i = 0; i <= n; i++) {
    streamOffsets[i] = toc.blockStreamOffset(i);
    blobOffsets[i] = toc.blockOffset(i);
    if (i < n) {
      codecs[i] = toc.blockCodec(i);
      digests?.set(toc.blockSha256(i), i * 32);
    }
  }
  const fileOffsets = new Float64Array(toc.inodeCount);
  const fileSizes = new Float64Array(toc.inodeCount).fill(-1);
  for (let ino = 1; ino <= toc.inodeCount; ino++) {
    if (toc.type(ino) !== EntryType.File) continue;
    const st = toc.stat(ino);
    fileOffsets[ino - 1] = st.dataOffset;
    fileSizes[ino - 1] = st.size;
  }
  return {
    path: blocks.dataPath,
    streamOffsets,
    blobOffsets,
    codecs,
    fileOffsets,
    fileSizes,
    present: blocks.snapshot(),
    complete: blocks.isComplete,
    ...(digests ? { digests } : {}),
  };
}

/** How often the cache's last use is refreshed while reads are served in C. */
const TOUCH_INTERVAL_MS = 30_000;

/**
 * Mirrors presence changes of the cache into a mounted session (whose tables were taken in the same tick as
 * this call), and keeps the cache's last use (GC order) current: reads served in C do not pass the JS reader
 * that would otherwise touch it. Returns the function that stops both.
 */
export function followPresence(
  addon: NativeAddon,
  session: Session,
  blocks: CachedBlocks,
  gate?: DirectReadGate,
): () => void {
  const removeListener = blocks.addUnitListener({
    present: (unit) => {
      if (gate?.isHeld(unit)) return; // marked when the gate lets it go
      addon.directMark(session, unit, true);
      if (blocks.isComplete) addon.directComplete(session, true);
    },
    reset: () => addon.directReset(session, blocks.snapshot()),
  });
  let served = 0;
  const toucher = setInterval(() => {
    const n = addon.info(session).directReads;
    if (n !== served) blocks.touch();
    served = n;
  }, TOUCH_INTERVAL_MS).unref();
  const removeGate = gate?.onRelease((unit) => {
    if (blocks.has(unit)) addon.directMark(session, unit, true);
  });
  return () => {
    removeGate?.();
    clearInterval(toucher);
    removeListener();
  };
}
