import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { EntryType } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import { base, chunks, dirMeta, pseudoRandom, tempDir } from './util.js';

/** A small blob (16 KiB blocks, ~25 blocks) holding every entry type, for corruption and fuzz tests. */
export async function smallRichBlob(): Promise<Buffer> {
  const { dir, cleanup } = await tempDir();
  try {
    const out = join(dir, 'f.dfb');
    const w = new DfbWriter({ out, tmpDir: dir, workers: 1, blockSize: 16 * 1024 });
    w.addEntry(dirMeta('etc'));
    for (let i = 0; i < 12; i++) {
      const c = pseudoRandom(1000 + i * 3000, i + 1, i % 2 === 0);
      await w.addFile({ ...base, path: `etc/f${i}`, type: EntryType.File, size: c.length }, chunks(c));
    }
    const big = pseudoRandom(200_000, 77);
    await w.addFile({ ...base, path: 'usr/lib/big', type: EntryType.File, size: big.length }, chunks(big));
    w.addHardlink('usr/lib/big2', 'usr/lib/big');
    await w.addFile({ ...base, path: 'usr/empty', type: EntryType.File, size: 0 }, chunks(Buffer.alloc(0)));
    w.addEntry({ ...base, path: 'usr/bin/sh', type: EntryType.Symlink, linkTarget: 'busybox' });
    w.addEntry({ ...base, path: 'dev/null', type: EntryType.CharDev, devMajor: 1, devMinor: 3 });
    w.addEntry({ ...base, path: 'dev/sda', type: EntryType.BlockDev, devMajor: 8, devMinor: 1 });
    w.addEntry({ ...base, path: 'run/p', type: EntryType.Fifo });
    w.addEntry({ ...base, path: 'var/gone', type: EntryType.Whiteout });
    w.markOpaque('var/cache');
    w.addEntry(
      dirMeta('var/cache/x', {
        xattrs: new Map([
          ['user.a', Buffer.from([1, 2, 3])],
          ['user.b', Buffer.alloc(0)],
        ]),
      }),
    );
    await w.finish();
    return await readFile(out);
  } finally {
    await cleanup();
  }
}
