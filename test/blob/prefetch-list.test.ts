// The prefetch list file (dfconvert --prefetch-list, dfnode run --record-reads): parse, format, refuse.
import { truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  formatPrefetchList,
  normalizePrefetchPath,
  parsePrefetchList,
  PREFETCH_LIST_LIMITS,
  readPrefetchListFile,
} from '../../src/blob/prefetch-list.js';
import { isDfError } from '../../src/errors.js';
import { tempDir } from '../helpers/temp.js';

function refused(text: string): string {
  try {
    parsePrefetchList(text);
  } catch (err) {
    expect(isDfError(err, 'INVALID_ARGUMENT')).toBe(true);
    return (err as Error).message;
  }
  throw new Error('accepted');
}

describe('prefetch list', () => {
  it('parses JSON lines, plain paths, comments and blank lines, in order', () => {
    const text = [
      '# recorded by dfnode',
      '{"path":"/usr/lib/x86_64-linux-gnu/libc.so.6","ranges":[[0,131072],[1835008,65536]]}',
      '',
      '/usr/bin/python3',
      '{"path":"//etc/./ld.so.cache","extra":1}',
      '   ',
      '{"path":"/a/b/../c","ranges":[]}\r',
    ].join('\n');
    expect(parsePrefetchList(text)).toEqual([
      {
        path: '/usr/lib/x86_64-linux-gnu/libc.so.6',
        ranges: [
          [0, 131072],
          [1835008, 65536],
        ],
      },
      { path: '/usr/bin/python3' },
      { path: '/etc/ld.so.cache' },
      { path: '/a/c', ranges: [] },
    ]);
  });

  it('formats what it parses back to the same entries', () => {
    const entries = [{ path: '/x', ranges: [[5, 6] as const] }, { path: '/y/z' }];
    const text = formatPrefetchList(entries);
    expect(text).toBe('{"path":"/x","ranges":[[5,6]]}\n{"path":"/y/z"}\n');
    expect(parsePrefetchList(text)).toEqual(entries);
  });

  it('normalises paths without climbing above the root', () => {
    expect(normalizePrefetchPath('/../../etc//passwd/.')).toBe('/etc/passwd');
  });

  it('refuses bad lines, naming the line', () => {
    expect(refused('/ok\n{"path":1}')).toMatch(/line 2: "path"/);
    expect(refused('{"path":"/a"')).toMatch(/line 1: not valid JSON/);
    expect(refused('[1,2]')).toMatch(/line 1: path "\[1,2\]" is not absolute/);
    expect(refused('{"path":"rel/x"}')).toMatch(/line 1: .*not absolute/);
    expect(refused('{"path":"/"}')).toMatch(/names the root/);
    expect(refused('{"path":"/a\\u0000b"}')).toMatch(/NUL/);
    expect(refused('\n{"path":"/a","ranges":[[-1,5]]}')).toMatch(/line 2: range .* non-negative integers/);
    expect(refused('{"path":"/a","ranges":[[0,1.5]]}')).toMatch(/non-negative integers/);
    expect(refused('{"path":"/a","ranges":[[0,1e400]]}')).toMatch(/non-negative integers/);
    expect(refused('{"path":"/a","ranges":[[0,1,2]]}')).toMatch(/pair/);
    expect(refused('{"path":"/a","ranges":{"0":1}}')).toMatch(/not an array/);
    expect(refused(`{"path":"/a","ranges":[[${Number.MAX_SAFE_INTEGER},1]]}`)).toMatch(/too large/);
    expect(refused(`{"path":"/${'x'.repeat(PREFETCH_LIST_LIMITS.maxPathBytes)}"}`)).toMatch(/longer than/);
  });

  it('refuses lists beyond its bounds before doing the work', () => {
    expect(refused('\n'.repeat(PREFETCH_LIST_LIMITS.maxLines))).toMatch(/more than .* lines/);
    const many = JSON.stringify({ path: '/a', ranges: Array.from({ length: 1001 }, (_, i) => [i, 1]) });
    const lines = Array.from({ length: 1000 }, () => many).join('\n');
    expect(refused(lines)).toMatch(/more than 1000000 ranges/);
  });

  it('reads a list file, and refuses a directory, a missing file or one over the size cap before reading it', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const ok = join(dir, 'ok.jsonl');
      await writeFile(ok, '/a\n{"path":"/b","ranges":[[1,2]]}\n');
      expect(await readPrefetchListFile(ok)).toEqual([{ path: '/a' }, { path: '/b', ranges: [[1, 2]] }]);
      const big = join(dir, 'big.jsonl');
      await writeFile(big, '');
      await truncate(big, PREFETCH_LIST_LIMITS.maxBytes + 1); // sparse: never read
      for (const f of [big, dir, join(dir, 'missing')])
        await expect(readPrefetchListFile(f)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    } finally {
      await cleanup();
    }
  });
});
