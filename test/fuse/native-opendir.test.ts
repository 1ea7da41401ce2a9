// Directory handles of the native addon through the kernel: a directory opened many times at once costs
// one listing in C (shared by its handles, freed with the last one), and every handle still lists it fully,
// with telldir/seekdir/rewinddir working. Needs root, /dev/fuse and perl (telldir/seekdir, which Node lacks).
import { execFile } from 'node:child_process';
import { mkdir, opendir, readdir } from 'node:fs/promises';
import type { Dir } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EntryType } from '../../src/blob/types.js';
import { LayerFs } from '../../src/fuse/layer-fs.js';
import { NativeFuseBinding, type NativeFuseMount } from '../../src/fuse/native-binding.js';
import { dirMeta, writeDfb } from '../helpers/dfb.js';
import { hasTool } from '../helpers/require.js';
import { requireNativeMounts } from '../helpers/native.js';
import { tempDir } from '../helpers/temp.js';
import { DfbFileReader, base } from './layer.js';

const exec = promisify(execFile);

const req = requireNativeMounts({
  'perl in PATH': hasTool('perl'),
});

const ENTRIES = 20_000;
const HANDLES = 400;

/** Names of a Dir handle, read to the end. */
async function drain(d: Dir): Promise<string[]> {
  const names: string[] = [];
  for (let e = await d.read(); e; e = await d.read()) names.push(e.name);
  return names;
}

// telldir after 100 entries, read 50, seekdir back and read them again, then rewinddir and read everything
const SEEK_SCRIPT = `
opendir(my $d, $ARGV[0]) or die "opendir: $!";
my @first = map { scalar readdir($d) } 1..100;
my $pos = telldir($d);
my @next = map { scalar readdir($d) } 1..50;
seekdir($d, $pos);
my @again = map { scalar readdir($d) } 1..50;
rewinddir($d);
my @all = readdir($d);
print join("\\n", join(",", @next) eq join(",", @again) ? "seek ok" : "seek differs", scalar(@all),
  join(",", @all[0..99]) eq join(",", @first) ? "rewind ok" : "rewind differs"), "\\n";
`;

describe.skipIf(req.skip)('native addon: directory handles (kernel)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let reader: DfbFileReader;
  let mp: string;
  let m: NativeFuseMount;
  let expected: string[];

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfnode-opendir-'));
    const entries = [dirMeta('big')];
    for (let i = 0; i < ENTRIES; i++)
      entries.push({ ...base, path: `big/entry-${String(i).padStart(5, '0')}`, type: EntryType.Fifo });
    const { path } = await writeDfb(dir, 'wide', {
      files: [{ path: 'big/file', content: 'x' }],
      entries,
    });
    reader = await DfbFileReader.open(path);
    const fs = new LayerFs({ toc: reader.toc, reader, readTimeoutMs: 5000 });
    const big = reader.toc.lookup('big');
    if (big === undefined) throw new Error('big/ is not in the TOC');
    expected = reader.toc.readdir(big).map((e) => e.name);
    mp = join(dir, 'mnt');
    await mkdir(mp);
    m = await new NativeFuseBinding().mount(mp, fs, { fsname: 'dfnode-opendir-test' });
  }, 120_000);

  afterAll(async () => {
    try {
      await m?.unmount();
      await reader?.close();
    } finally {
      await cleanup?.();
    }
  });

  /** Waits (bounded) until the kernel has released every directory handle (releasedir is asynchronous). */
  async function allReleased(): Promise<void> {
    for (let i = 0; i < 200 && m.info().dirHandles > 0; i++) await new Promise((r) => setTimeout(r, 25));
  }

  it('many open handles of a large directory share one listing, freed with the last handle', async () => {
    expect(expected.length).toBe(ENTRIES + 1);
    await allReleased();
    const idle = m.info();
    expect(idle.dirListings).toBe(0);
    expect(idle.dirBytes).toBe(0);

    const handles: Dir[] = [];
    try {
      handles.push(await opendir(join(mp, 'big')));
      const one = m.info();
      expect(one.dirListings).toBe(1);
      // at least the 20k entries' attributes: the counter measures the listing
      expect(one.dirBytes).toBeGreaterThan(ENTRIES * 100);
      handles.push(
        ...(await Promise.all(
          Array.from({ length: HANDLES - 1 }, () => opendir(join(mp, 'big'), { bufferSize: 64 })),
        )),
      );
      const many = m.info();
      expect(many.dirHandles).toBe(HANDLES);
      expect(many.dirListings).toBe(1);
      expect(many.dirBytes).toBe(one.dirBytes);
      // every handle lists the whole directory, several at a time
      const lists = await Promise.all(handles.slice(0, 8).map(drain));
      for (const names of lists) expect(names.sort()).toEqual(expected);
    } finally {
      await Promise.all(handles.map((h) => h.close()));
    }
    await allReleased();
    const after = m.info();
    expect(after.dirHandles).toBe(0);
    expect(after.dirListings).toBe(0);
    expect(after.dirBytes).toBe(0);
  });

  it('opens racing for a directory nobody has open end with one listing', async () => {
    await allReleased();
    const handles = await Promise.all(Array.from({ length: 32 }, () => opendir(join(mp, 'big'))));
    try {
      const i = m.info();
      expect(i.dirHandles).toBe(32);
      expect(i.dirListings).toBe(1);
      expect((await drain(handles[31]!)).sort()).toEqual(expected);
    } finally {
      await Promise.all(handles.map((h) => h.close()));
    }
    await allReleased();
    expect(m.info().dirBytes).toBe(0);
  });

  it('ls lists the TOC; telldir/seekdir and rewinddir keep working', async () => {
    const { stdout } = await exec('ls', ['-1', '-U', join(mp, 'big')], { maxBuffer: 8 << 20 });
    expect(stdout.trim().split('\n').sort()).toEqual(expected);
    expect((await readdir(join(mp, 'big'))).sort()).toEqual(expected);
    const perl = await exec('perl', ['-e', SEEK_SCRIPT, join(mp, 'big')]);
    // '.' and '..' come with the entries
    expect(perl.stdout.trim().split('\n')).toEqual(['seek ok', String(ENTRIES + 3), 'rewind ok']);
  });
});
