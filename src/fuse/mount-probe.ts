import { mkdir, rmdir } from 'node:fs/promises';
import { encodeToc } from '../blob/toc-encoder.js';
import { Toc } from '../blob/toc.js';
import { EntryType } from '../blob/types.js';
import { DfError } from '../errors.js';
import type { FileReader } from '../fetch/types.js';
import type { Logger } from '../log.js';
import { LayerFs } from './layer-fs.js';
import type { FuseBinding } from './types.js';

/** The TOC of a layer holding only an empty root directory. */
function emptyToc(): Toc {
  const root = { type: EntryType.Dir, mode: 0o755, uid: 0, gid: 0, mtimeSec: 0, mtimeNsec: 0, flags: 0 };
  const { toc } = encodeToc({
    root: { ...root, devMajor: 0, devMinor: 0, size: 0, dataOffset: 0, children: new Map() },
    blockRecords: Buffer.alloc(0),
    blockCount: 0,
    dataLength: 0,
    storedDataLength: 0,
  });
  return Toc.decode(toc);
}

/**
 * Mounts an empty layer with `binding` at `mountpoint` (created, and removed afterwards), checks that it
 * answers, and unmounts it: proof that FUSE mounts work on this host (device, permissions, the binding),
 * taken before any layer depends on it.
 */
export async function probeMount(binding: FuseBinding, mountpoint: string, logger?: Logger): Promise<void> {
  const toc = emptyToc();
  const reader: FileReader = {
    toc,
    read: () => Promise.reject(DfError.internal('the probe layer has no files')),
  };
  await mkdir(mountpoint, { recursive: true });
  const mount = await binding.mount(mountpoint, new LayerFs({ toc, reader, logger }), {
    fsname: 'dfnode:probe',
    logger,
  });
  try {
    if (!(await mount.check())) throw DfError.internal(`the probe mount at ${mountpoint} does not answer`);
  } finally {
    await mount.unmount();
  }
  await rmdir(mountpoint).catch(() => undefined);
}
