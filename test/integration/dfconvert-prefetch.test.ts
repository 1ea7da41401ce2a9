/**
 * dfconvert --prefetch-list end to end (the compiled CLI on the debian fixture, oci → oci): the listed files go
 * first in the layer's data stream, the TOC marks their ranges, the output is the same for any worker count,
 * `dfconvert verify` passes, and a bad list is refused with its line number.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import { formatPrefetchList } from '../../src/blob/prefetch-list.js';
import { DfbReader } from '../../src/blob/reader.js';
import { expectOk, runCli } from '../helpers/cli.js';
import { ensureFixture, type Fixture } from '../helpers/fixtures.js';
import { requireTools } from '../helpers/require.js';

const req = requireTools(['umoci', 'debootstrap']);

async function layers(dir: string, tag: string): Promise<{ manifest: string; layers: string[] }> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8'));
  const d = index.manifests.find((m: any) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  const m = JSON.parse(await readFile(join(dir, 'blobs', 'sha256', d.digest.slice(7)), 'utf8'));
  return {
    manifest: d.digest,
    layers: m.layers.map((l: any) => join(dir, 'blobs', 'sha256', l.digest.slice(7))),
  };
}

const LIST = [
  { path: '/usr/bin/ls' },
  { path: '/etc/passwd', ranges: [[0, 10] as const] },
  {
    path: '/usr/lib/x86_64-linux-gnu/libc.so.6',
    ranges: [[0, 131072] as const, [1_000_000, 65536] as const],
  },
  { path: '/not/in/the/image' },
];

describe.skipIf(req.skip)('dfconvert --prefetch-list', () => {
  let work: string;
  let fx: Fixture;
  let list: string;
  const args = () => ['--work-dir', join(work, 'dfwork'), '--quiet', '--force', '--prefetch-list', list];

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'dfconvert-prefetch-'));
    fx = await ensureFixture('debian');
    list = join(work, 'list.jsonl');
    await writeFile(list, '# recorded\n' + formatPrefetchList(LIST));
  });
  afterAll(async () => {
    if (work) await rm(work, { recursive: true, force: true });
  });

  it('lays out the listed files first, marks their ranges, is deterministic and verifies', async () => {
    const out1 = join(work, 'o1');
    const out2 = join(work, 'o2');
    expectOk(
      await runCli('dfconvert', [...args(), '--workers', '1', fx.ref, `oci:${out1}:dfb`]),
      'convert 1',
    );
    expectOk(
      await runCli('dfconvert', [...args(), '--workers', '3', fx.ref, `oci:${out2}:dfb`]),
      'convert 2',
    );
    const a = await layers(out1, 'dfb');
    const b = await layers(out2, 'dfb');
    expect(b.manifest).toBe(a.manifest);
    let marked = 0;
    for (const path of a.layers) {
      const rr = await FileRangeReader.open(path);
      try {
        const toc = (await DfbReader.open(rr)).toc;
        const ls = toc.lookup('usr/bin/ls');
        if (ls === undefined) continue;
        marked++;
        // the first listed file the layer holds starts the stream; the others follow in list order
        expect(toc.stat(ls).dataOffset).toBe(0);
        const passwd = toc.stat(toc.lookup('etc/passwd')!);
        const libc = toc.stat(toc.lookup('usr/lib/x86_64-linux-gnu/libc.so.6')!);
        expect(passwd.dataOffset).toBe(toc.stat(ls).size);
        expect(libc.dataOffset).toBe(passwd.dataOffset + passwd.size);
        expect(toc.prefetchRanges).toEqual([
          { offset: 0, length: toc.stat(ls).size + 10 },
          { offset: libc.dataOffset, length: 131072 },
          { offset: libc.dataOffset + 1_000_000, length: 65536 },
        ]);
      } finally {
        await rr.close();
      }
    }
    expect(marked).toBe(1);
    const v = await runCli('dfconvert', ['verify', fx.ref, `oci:${out1}:dfb`]);
    expectOk(v, 'verify');
    expect(v.stdout).toMatch(/^OK/);
  });

  it('refuses a bad list before converting anything, naming the line', async () => {
    const bad = join(work, 'bad.jsonl');
    await writeFile(bad, '/usr/bin/ls\n{"path":"/x","ranges":[[0,-1]]}\n');
    const out = join(work, 'bad-out');
    const r = await runCli('dfconvert', [
      '--work-dir',
      join(work, 'dfwork'),
      '--quiet',
      '--prefetch-list',
      bad,
      fx.ref,
      `oci:${out}:dfb`,
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/prefetch list line 2: range \[0,-1\]/);
    expect(r.stderr).not.toMatch(/\n\s+at .+\(.+:\d+:\d+\)/);
    const missing = await runCli('dfconvert', [
      '--quiet',
      '--prefetch-list',
      join(work, 'nope'),
      fx.ref,
      `oci:${out}:dfb`,
    ]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/prefetch list .*nope/);
  });
});
