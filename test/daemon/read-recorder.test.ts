// The read recorder of `dfnode run --record-reads` (daemon/read-recorder.ts) over two real DFB layers, and
// the prefetch list format it writes (blob/prefetch-list.ts).
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { formatPrefetchList, parsePrefetchList } from '../../src/blob/prefetch-list.js';
import { ReadRecorder } from '../../src/daemon/read-recorder.js';
import type { FileReader } from '../../src/fetch/types.js';
import { makeBlob, type TestBlob } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

async function twoLayers(): Promise<{ dir: string; lower: TestBlob; upper: TestBlob }> {
  const { dir, cleanup } = await tempDir();
  cleanups.push(cleanup);
  return { dir, lower: await makeBlob(dir, 'lower'), upper: await makeBlob(dir, 'upper') };
}

/** A reader that answers zeros and counts its calls. */
function fakeReader(tb: TestBlob): FileReader & { calls: number; released: number[] } {
  const r = {
    toc: tb.toc,
    calls: 0,
    released: [] as number[],
    read: async (_ino: number, _off: number, len: number) => {
      r.calls++;
      return Buffer.alloc(len);
    },
    release: (ino: number) => void r.released.push(ino),
  };
  return r;
}

describe('ReadRecorder', () => {
  it('records files in first-access order across layers, with merged ranges, and passes reads through', async () => {
    const { lower, upper } = await twoLayers();
    const rec = new ReadRecorder();
    const lr = fakeReader(lower);
    const ur = fakeReader(upper);
    const l = rec.wrap(lower.toc, lr);
    const u = rec.wrap(upper.toc, ur);
    await u.read(upper.ino('usr/big1'), 0, 65536);
    await l.read(lower.ino('etc/f1'), 0, 100_000); // clamped to the file size (4500)
    await u.read(upper.ino('usr/big1'), 200_000, 10_000);
    await u.read(upper.ino('usr/big1'), 65536, 65536); // adjacent to the first range: merged into it
    await l.read(lower.ino('usr/big2'), 10, 20);
    await u.read(upper.ino('usr/big1'), 131072, 80_000); // joins the first range with the [200000, 210000) one
    await l.read(lower.ino('etc/f1'), 0, 10); // nothing new
    u.release?.(upper.ino('usr/big1'));
    expect(lr.calls + ur.calls).toBe(7);
    expect(ur.released).toEqual([upper.ino('usr/big1')]);
    expect(rec.entries()).toEqual([
      { path: '/usr/big1', ranges: [[0, 211_072]] },
      { path: '/etc/f1', ranges: [[0, 4500]] },
      { path: '/usr/big2', ranges: [[10, 20]] },
    ]);
  });

  it('keeps distinct ranges in first-access order; past the range cap a file counts as read whole', async () => {
    const { lower } = await twoLayers();
    const rec = new ReadRecorder({ maxRangesPerFile: 3 });
    const r = rec.wrap(lower.toc, fakeReader(lower));
    const ino = lower.ino('usr/big1');
    await r.read(ino, 100_000, 10);
    await r.read(ino, 0, 10);
    await r.read(ino, 50_000, 10);
    expect(rec.entries()).toEqual([
      {
        path: '/usr/big1',
        ranges: [
          [100_000, 10],
          [0, 10],
          [50_000, 10],
        ],
      },
    ]);
    await r.read(ino, 70_000, 10);
    expect(rec.entries()).toEqual([{ path: '/usr/big1' }]);
    await r.read(ino, 80_000, 10); // stays whole
    expect(rec.entries()).toEqual([{ path: '/usr/big1' }]);
  });

  it('records at most maxFiles files and says so in the list it writes, atomically', async () => {
    const { dir, lower } = await twoLayers();
    const rec = new ReadRecorder({ maxFiles: 2 });
    const r = rec.wrap(lower.toc, fakeReader(lower));
    for (const p of ['etc/f0', 'etc/f1', 'etc/f2', 'etc/f3']) await r.read(lower.ino(p), 0, 10);
    await r.read(lower.ino('etc/f0'), 100, 10); // a recorded file still gets its ranges
    expect(rec.fileCount).toBe(2);
    expect(rec.droppedFiles).toBe(2);
    const file = join(dir, 'reads.jsonl');
    await rec.writeTo(file);
    const text = await readFile(file, 'utf8');
    expect(text.split('\n')[0]).toMatch(/^# dfnode: 2 reads of further files not recorded/);
    expect(parsePrefetchList(text)).toEqual([
      {
        path: '/etc/f0',
        ranges: [
          [0, 10],
          [100, 10],
        ],
      },
      { path: '/etc/f1', ranges: [[0, 10]] },
    ]);
    // no temporary file left beside it
    expect((await readdir(dir)).filter((n) => n.startsWith('reads.jsonl'))).toEqual(['reads.jsonl']);
  });

  it('ignores reads of bad inodes and past the end of a file', async () => {
    const { lower } = await twoLayers();
    const rec = new ReadRecorder();
    const r = rec.wrap(lower.toc, fakeReader(lower));
    await r.read(999_999, 0, 10);
    await r.read(lower.ino('etc/f0'), 1_000_000, 10);
    expect(rec.entries()).toEqual([]);
  });
});

describe('prefetch list format', () => {
  it('round-trips, takes plain paths, comments and empty lines', () => {
    const entries = [{ path: '/a b/c', ranges: [[0, 4096] as [number, number]] }, { path: '/x' }];
    expect(parsePrefetchList(formatPrefetchList(entries))).toEqual(entries);
    expect(parsePrefetchList('# c\n\n/usr/bin/ls\n{"path":"/y","ranges":[[1,2]]}\n')).toEqual([
      { path: '/usr/bin/ls' },
      { path: '/y', ranges: [[1, 2]] },
    ]);
  });

  it('names the line of an invalid entry', () => {
    expect(() => parsePrefetchList('/ok\n{"path":"/a","ranges":[[0,-1]]}\n')).toThrow(/line 2/);
    expect(() => parsePrefetchList('\n\n{nope\n')).toThrow(/line 3/);
    expect(() => parsePrefetchList('relative/path\n')).toThrow(/line 1.*absolute/);
    expect(() => parsePrefetchList('{"ranges":[]}\n')).toThrow(/line 1/);
  });
});
