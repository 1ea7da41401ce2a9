import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { DfbReader } from '../../src/blob/reader.js';
import { EntryType } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import { base, dirMeta } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { BufferRangeReader, parts } from './util.js';

async function* one(b: Buffer): AsyncGenerator<Buffer> {
  yield b;
}

it('writes, decodes and looks up a 100,000-entry TOC', async () => {
  const { dir, cleanup } = await tempDir();
  try {
    const out = join(dir, 'big.dfb');
    const w = new DfbWriter({ out, tmpDir: dir, workers: 1 });
    const DIRS = 500;
    const PER = 199; // 500 dirs + 500 * 199 names = 100,000 entries
    const t0 = performance.now();
    for (let d = 0; d < DIRS; d++) {
      const dp = `usr/lib/python3/site-packages/pkg${d}`;
      w.addEntry(dirMeta(dp));
      for (let f = 0; f < PER; f++) {
        const path = `${dp}/module_${f}.py`;
        if (f % 50 === 49) w.addHardlink(path, `${dp}/module_0.py`);
        else if (f % 50 === 48)
          w.addEntry({ ...base, path, type: EntryType.Symlink, linkTarget: `module_${f - 1}.py` });
        else {
          const c = Buffer.from(f % 3 === 0 ? `shared content ${f}\n` : `# ${d}/${f}\n`);
          await w.addFile({ ...base, path, type: EntryType.File, size: c.length }, one(c));
        }
      }
    }
    const res = await w.finish();
    const tWrite = performance.now() - t0;
    expect(res.entries).toBe(DIRS * (PER + 1) + 4); // + usr, usr/lib, usr/lib/python3, site-packages

    const blob = await readFile(out);
    const t1 = performance.now();
    const reader = await DfbReader.open(new BufferRangeReader(blob));
    const tOpen = performance.now() - t1;
    const toc = reader.toc;
    expect(toc.direntCount).toBe(res.entries);
    expect(toc.inodeCount).toBe(res.entries + 1 - DIRS * 3); // hard links share inodes (3 per dir)

    const t2 = performance.now();
    let n = 0;
    for (const { path, ino } of toc.walk()) {
      expect(toc.lookup(path)).toBe(ino);
      n++;
    }
    const tLookup = performance.now() - t2;
    expect(n).toBe(res.entries);
    const m0 = toc.lookup('usr/lib/python3/site-packages/pkg321/module_0.py')!;
    expect(toc.stat(m0).nlink).toBe(4);
    expect(toc.lookup('usr/lib/python3/site-packages/pkg321/module_149.py')).toBe(m0);
    expect(toc.readlink(toc.lookup('usr/lib/python3/site-packages/pkg321/module_98.py')!)).toBe(
      'module_97.py',
    );
    expect(toc.lookup('usr/lib/python3/site-packages/pkg321/module_199.py')).toBeUndefined();
    expect(toc.lookup('usr/lib/python3/site-packages/pkg500')).toBeUndefined();
    const pkgs = toc.readdir(toc.lookup('usr/lib/python3/site-packages')!);
    expect(pkgs.length).toBe(DIRS);
    expect(pkgs[0]!.name).toBe('pkg0');
    expect(pkgs[1]!.name).toBe('pkg1');
    expect(pkgs[2]!.name).toBe('pkg10'); // byte order
    const f = toc.lookup('usr/lib/python3/site-packages/pkg7/module_4.py')!;
    expect((await reader.readFile(f, 0, 100)).toString()).toBe('# 7/4\n');
    const g = toc.lookup('usr/lib/python3/site-packages/pkg8/module_3.py')!;
    expect((await reader.readFile(g, 0, 100)).toString()).toBe('shared content 3\n');
    expect(res.dedupedFiles).toBeGreaterThan(0);
    console.log(
      `100k TOC: ${(parts(blob).toc.length / 2 ** 20).toFixed(1)} MiB decoded, ${(res.tocSize / 2 ** 20).toFixed(2)} MiB stored; ` +
        `write ${tWrite.toFixed(0)} ms, open ${tOpen.toFixed(0)} ms, ${n} lookups ${tLookup.toFixed(0)} ms`,
    );
  } finally {
    await cleanup();
  }
});
