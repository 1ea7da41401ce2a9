// dfconvert --prefetch-list at the writer: the listed files go first in the data stream, in list order, the
// TOC (format 1.1) carries their read ranges, and the result is deterministic and reads back unchanged.
import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mergeRanges } from '../../src/blob/access-order.js';
import { decodeFooter, FOOTER_SIZE } from '../../src/blob/footer.js';
import type { PrefetchEntry } from '../../src/blob/prefetch-list.js';
import { DfbReader } from '../../src/blob/reader.js';
import { Toc } from '../../src/blob/toc.js';
import { H, PX } from '../../src/blob/toc-layout.js';
import { parseSections, validateBlocks, validateTree } from '../../src/blob/toc-validate.js';
import { EntryType } from '../../src/blob/types.js';
import { base, pseudoRandom, writeDfb, type DfbSpec } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { BufferRangeReader, parts, withToc } from './util.js';

const content = {
  'etc/a': pseudoRandom(20_000, 1),
  'usr/lib/libx': pseudoRandom(100_000, 2),
  'usr/bin/app': pseudoRandom(50_000, 3),
  'usr/share/doc': pseudoRandom(30_000, 4),
  'var/old': pseudoRandom(10_000, 5),
  dup: pseudoRandom(20_000, 1), // same bytes as etc/a
  'var/new': pseudoRandom(7_000, 6),
};

const spec = (prefetch?: PrefetchEntry[], workers = 1): DfbSpec => ({
  files: [
    ...Object.entries(content).map(([path, c]) => ({ path, content: c })),
    { path: 'var/old', content: content['var/new'] }, // a later entry replaces var/old
  ],
  entries: [{ ...base, path: 'opt/gone', type: EntryType.Whiteout }],
  hardlinks: [['usr/lib/liby', 'usr/lib/libx']],
  prefetch,
  workers,
});

const LIST: PrefetchEntry[] = [
  {
    path: '/usr/bin/app',
    ranges: [
      [0, 4096],
      [40_000, 100],
    ],
  },
  { path: '/usr/lib/liby' }, // a hard link: its inode's content
  { path: '/missing' },
  { path: '/opt/gone' }, // a whiteout
  {
    path: '/usr/bin/app',
    ranges: [
      [8192, 10],
      [49_990, 1000],
    ],
  }, // listed twice; the range is clamped
  { path: '/usr' }, // a directory
  { path: '/dup' }, // same content as etc/a: placed here, both names share it
  { path: '/var/old', ranges: [[0, 0]] }, // the replaced file: the newer content, an empty range
];

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => ({ dir, cleanup } = await tempDir()));
afterAll(() => cleanup());

async function build(name: string, s: DfbSpec) {
  const res = await writeDfb(dir, name, s);
  const bytes = await readFile(res.path);
  const reader = await DfbReader.open(new BufferRangeReader(bytes));
  return { res, bytes, reader, toc: reader.toc };
}

describe('access-ordered layout', () => {
  it('puts listed files first in list order, the rest in tar order, and marks merged read ranges', async () => {
    const { toc, bytes, reader } = await build('ordered', spec(LIST));
    const off = (p: string) => toc.stat(toc.lookup(p)!).dataOffset;
    expect(off('usr/bin/app')).toBe(0);
    expect(off('usr/lib/libx')).toBe(50_000);
    expect(off('usr/lib/liby')).toBe(50_000);
    expect(off('dup')).toBe(150_000);
    expect(off('etc/a')).toBe(150_000);
    // listed with an empty range: placed (it is listed) but no range marked; the content it replaced is not
    expect(off('var/old')).toBe(170_000);
    expect(off('var/new')).toBe(170_000);
    // the rest, in tar order of first appearance (the replaced content stays in the stream, as in tar order)
    expect(off('usr/share/doc')).toBe(177_000);
    expect(toc.dataLength).toBe(217_000);
    expect(toc.prefetchRanges).toEqual([
      { offset: 0, length: 4096 },
      { offset: 8192, length: 10 },
      { offset: 40_000, length: 100 },
      { offset: 49_990, length: 170_000 - 49_990 }, // app's tail, libx and dup touch: one range
    ]);
    const footer = decodeFooter(bytes.subarray(bytes.length - FOOTER_SIZE), bytes.length);
    expect(footer.minor).toBe(1);
    expect(parts(bytes).toc.readUInt32LE(H.headerSize)).toBe(PX.SIZE);
    // every file reads back as written
    for (const [p, c] of Object.entries({
      ...content,
      'var/old': content['var/new'],
      'usr/lib/liby': content['usr/lib/libx'],
    }))
      expect((await reader.readFile(toc.lookup(p)!, 0, c.length)).equals(c), p).toBe(true);
    expect(toc.type(toc.lookup('opt/gone')!)).toBe(EntryType.Whiteout);
  });

  it('is deterministic: the same tar and list give the same bytes with any worker count', async () => {
    const a = await build('det1', spec(LIST, 1));
    const b = await build('det3', spec(LIST, 3));
    expect(b.res.digest).toBe(a.res.digest);
    expect(b.bytes.equals(a.bytes)).toBe(true);
  });

  it('without a list, or when nothing listed is in the layer, writes the 1.0 blob of tar order', async () => {
    const plain = await build('plain', spec());
    const none = await build('none', spec([{ path: '/missing' }, { path: '/opt/gone' }, { path: '/usr' }]));
    expect(none.res.digest).toBe(plain.res.digest);
    expect(plain.toc.prefetchRanges).toEqual([]);
    const footer = decodeFooter(plain.bytes.subarray(plain.bytes.length - FOOTER_SIZE), plain.bytes.length);
    expect(footer.minor).toBe(0);
    expect(parts(plain.bytes).toc.readUInt32LE(H.headerSize)).toBe(H.SIZE);
    expect(plain.toc.stat(plain.toc.lookup('etc/a')!).dataOffset).toBe(0);
  });

  it('a 1.1 TOC passes the 1.0 rules (headerSize is the stride) and reads the same without its extension', async () => {
    const { bytes, toc } = await build('compat', spec(LIST));
    const t = parts(bytes).toc;
    // what a 1.0 reader checks: sections, blocks and tree; it never looks at bytes 64..79 nor at the ranges
    const s = parseSections(t);
    validateBlocks(s);
    validateTree(s);
    // the same TOC with the 1.0 header: same tree, no ranges
    const old = Buffer.concat([t.subarray(0, H.SIZE), t.subarray(PX.SIZE)]);
    old.writeUInt32LE(H.SIZE, H.headerSize);
    const t10 = Toc.decode(old);
    expect(t10.prefetchRanges).toEqual([]);
    expect([...t10.walk()]).toEqual([...toc.walk()]);
    for (const { ino } of toc.walk()) expect(t10.stat(ino)).toEqual(toc.stat(ino));
    // and as a whole blob by hand: the 1.0 TOC, footer minor 0: opens and reads every file, no ranges
    const b10 = withToc(bytes, old, 16 * 1024);
    expect(decodeFooter(b10.subarray(b10.length - FOOTER_SIZE), b10.length).minor).toBe(0);
    const r10 = await DfbReader.open(new BufferRangeReader(b10));
    expect(r10.toc.prefetchRanges).toEqual([]);
    for (const [p, c] of Object.entries({ ...content, 'var/old': content['var/new'] }))
      expect((await r10.readFile(r10.toc.lookup(p)!, 0, c.length)).equals(c), p).toBe(true);
  });
});

describe('list paths resolve in the layer', () => {
  it('follows the symlinks the layer holds, stays inside it, and skips what it cannot resolve', async () => {
    const sym = (path: string, linkTarget: string) => ({
      ...base,
      path,
      type: EntryType.Symlink,
      linkTarget,
    });
    const s: DfbSpec = {
      files: [
        { path: 'usr/lib/one', content: pseudoRandom(1000, 11) },
        { path: 'usr/bin/two', content: pseudoRandom(2000, 12) },
        { path: 'usr/bin/three', content: pseudoRandom(3000, 13) },
        { path: 'etc/four', content: pseudoRandom(4000, 14) },
      ],
      entries: [
        sym('lib', 'usr/lib'), // merged /usr, relative
        sym('bin', '/usr/bin'), // absolute
        sym('usr/bin/up', '../../etc'),
        sym('loop1', 'loop2'),
        sym('loop2', 'loop1'),
      ],
    };
    const { toc } = await build('resolve', {
      ...s,
      prefetch: [
        { path: '/loop1/x' }, // a symlink loop: skipped
        { path: `/${'x'.repeat(5000)}/y` }, // a name longer than a TOC name: skipped, not an error
        { path: '/etc/four/more' }, // through a file: skipped
        { path: '/bin/up/four' }, // bin → /usr/bin, up → ../../etc
        { path: '/lib/one' },
        { path: '/bin/three' },
      ],
    });
    const off = (p: string) => toc.stat(toc.lookup(p)!).dataOffset;
    expect(off('etc/four')).toBe(0);
    expect(off('usr/lib/one')).toBe(4000);
    expect(off('usr/bin/three')).toBe(5000);
    expect(off('usr/bin/two')).toBe(8000);
    expect(toc.prefetchRanges).toEqual([{ offset: 0, length: 8000 }]);
  });
});

describe('TOC prefetch fields are validated', () => {
  let t: Buffer;
  let rangesAt: number;
  beforeAll(async () => {
    const { bytes } = await build('hostile', spec(LIST));
    t = parts(bytes).toc;
    const s = parseSections(t);
    rangesAt = s.strBase + t.readUInt32LE(PX.offset);
  });

  const refused = (edit: (b: Buffer) => void, msg: RegExp) => {
    const b = Buffer.from(t);
    edit(b);
    let err: unknown;
    try {
      Toc.decode(b);
    } catch (e) {
      err = e;
    }
    expect(err, String(msg)).toMatchObject({ code: 'CORRUPT' });
    expect((err as Error).message).toMatch(msg);
  };

  it('refuses counts, offsets and ranges that break the rules, with CORRUPT', () => {
    const count = t.readUInt32LE(PX.count);
    expect(count).toBe(4);
    refused((b) => b.writeUInt32LE(65_537, PX.count), /65537 > 65536/);
    refused((b) => b.writeUInt32LE(0xffff_ffff, PX.count), /prefetch ranges/);
    refused((b) => b.writeUInt32LE(0xffff_fff0, PX.offset), /outside the string table/);
    refused((b) => b.writeUInt32LE(count + 1000, PX.count), /outside the string table/);
    refused((b) => (b.writeUInt32LE(0, PX.count), b.writeUInt32LE(8, PX.offset)), /count 0 with offset 8/);
    refused((b) => b.writeUInt32LE(0, rangesAt + 8), /range 0: empty/);
    refused((b) => b.writeUInt32LE(300_000, rangesAt + 16 * 3 + 8), /past the end of the data stream/);
    refused((b) => b.writeUInt32LE(0x20_0000, rangesAt + 4), /offset out of range/);
    refused((b) => b.writeUInt32LE(0, rangesAt + 16), /not after the end of range 0/); // unsorted
    refused((b) => b.writeUInt32LE(4096, rangesAt + 16), /not after the end of range 0/); // touching
    refused((b) => b.writeUInt32LE(4000, rangesAt + 16), /not after the end of range 0/); // overlapping
  });
});

describe('mergeRanges', () => {
  it('merges touching and overlapping ranges, and bridges gaps only past the range limit', () => {
    expect(
      mergeRanges(
        [
          [10, 20],
          [0, 5],
          [20, 30],
          [25, 27],
          [40, 41],
        ],
        16,
      ),
    ).toEqual([
      { offset: 0, length: 5 },
      { offset: 10, length: 20 },
      { offset: 40, length: 1 },
    ]);
    const many = Array.from({ length: 70_000 }, (_, i) => [i * 10, i * 10 + 1] as [number, number]);
    const merged = mergeRanges(many, 16);
    expect(merged.length).toBeLessThanOrEqual(65_536);
    expect(merged.length).toBe(1); // gaps of 9 < one block: bridged in one step
  });
});
