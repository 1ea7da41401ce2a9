import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DfbReader } from '../../src/blob/reader.js';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import { EntryType, type WriteResult } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import { isDfError } from '../../src/errors.js';
import { sha256Digest } from '../helpers/digest.js';
import { base, chunks, dirMeta, pseudoRandom } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';

const longName = 'ü'.repeat(100) + '-long-名前-' + 'x'.repeat(60); // > 255 bytes? no: 200+16+60 bytes
const bigContent = pseudoRandom(5 * 1024 * 1024 + 123, 7); // spooled (> 4 MiB)

async function buildRich(out: string, tmpDir: string, workers = 2): Promise<WriteResult> {
  const w = new DfbWriter({ out, tmpDir, workers, blockSize: 16 * 1024 });
  w.addEntry(dirMeta('.', { mode: 0o1777, uid: 5, gid: 6, mtimeSec: 42, mtimeNsec: 7 }));
  w.addEntry(dirMeta('etc'));
  await w.addFile(
    { ...base, path: 'etc/passwd', type: EntryType.File, size: 12 },
    chunks(Buffer.from('root:x:0:0:\n'), 5),
  );
  await w.addFile({ ...base, path: 'etc/empty', type: EntryType.File, size: 0 }, chunks(Buffer.alloc(0)));
  // identical contents stored once
  await w.addFile(
    { ...base, path: 'etc/passwd.bak', type: EntryType.File, size: 12 },
    chunks(Buffer.from('root:x:0:0:\n')),
  );
  w.addEntry({
    ...base,
    path: 'bin/sh',
    type: EntryType.Symlink,
    linkTarget: '/usr/bin/busybox',
    mode: 0o777,
  });
  w.addEntry({ ...base, path: 'dev/null', type: EntryType.CharDev, devMajor: 1, devMinor: 3, mode: 0o666 });
  w.addEntry({
    ...base,
    path: 'dev/sda',
    type: EntryType.BlockDev,
    devMajor: 8,
    devMinor: 0xfffff,
    mode: 0o660,
  });
  w.addEntry({ ...base, path: 'run/fifo', type: EntryType.Fifo, mode: 0o600 });
  w.addEntry({ ...base, path: 'var/gone', type: EntryType.Whiteout, mode: 0 });
  w.markOpaque('var/cache');
  w.addEntry(dirMeta('var/cache', { mode: 0o700 })); // explicit entry after the marker keeps it opaque
  await w.addFile(
    {
      ...base,
      path: 'usr/bin/su',
      type: EntryType.File,
      size: 4,
      mode: 0o4755,
      uid: 4_000_000_000,
      gid: 4_294_967_295,
    },
    chunks(Buffer.from('su!\n')),
  );
  await w.addFile(
    {
      ...base,
      path: 'usr/bin/wall',
      type: EntryType.File,
      size: 3,
      mode: 0o2755,
      mtimeSec: -1,
      mtimeNsec: 999_999_999,
    },
    chunks(Buffer.from('w\n\n')),
  );
  await w.addFile(
    { ...base, path: 'usr/old', type: EntryType.File, size: 2, mtimeSec: 2 ** 40, mtimeNsec: 1 },
    chunks(Buffer.from('ok')),
  );
  await w.addFile(
    { ...base, path: 'usr/lib/big', type: EntryType.File, size: bigContent.length },
    chunks(bigContent, 65536 + 17),
  );
  w.addHardlink('usr/lib/big.link', 'usr/lib/big');
  w.addHardlink('usr/lib/big.link2', 'usr/lib/big');
  await w.addFile(
    { ...base, path: 'usr/lib/big.copy', type: EntryType.File, size: bigContent.length },
    chunks(bigContent, 1 << 20),
  );
  await w.addFile(
    {
      ...base,
      path: `usr/share/${longName}`,
      type: EntryType.File,
      size: 5,
      xattrs: new Map([
        ['security.capability', Buffer.from([0, 0, 0, 2, 0xff, 0, 0x80, 0])],
        ['user.empty', Buffer.alloc(0)],
        ['trusted.overlay.x', Buffer.from([0xc3, 0x28])],
      ]),
    },
    chunks(Buffer.from('hello')),
  );
  w.addEntry(dirMeta('usr/share', { xattrs: new Map([['user.dir', Buffer.from('d')]]) }));
  // replacements: file replaced by a file, file replaced by a dir, dir replaced by a dir keeps children
  await w.addFile({ ...base, path: 'opt/f', type: EntryType.File, size: 3 }, chunks(Buffer.from('one')));
  w.addHardlink('opt/f.old', 'opt/f');
  await w.addFile({ ...base, path: 'opt/f', type: EntryType.File, size: 3 }, chunks(Buffer.from('two')));
  await w.addFile({ ...base, path: 'opt/d', type: EntryType.File, size: 1 }, chunks(Buffer.from('x')));
  w.addEntry(dirMeta('opt/d', { mode: 0o711 }));
  await w.addFile({ ...base, path: 'opt/d/child', type: EntryType.File, size: 1 }, chunks(Buffer.from('c')));
  w.addEntry(dirMeta('opt/d', { mode: 0o750, uid: 9 }));
  return w.finish();
}

describe('DFB round trip', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let reader: DfbReader;
  let result: WriteResult;
  let blobPath: string;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir());
    blobPath = join(dir, 'rich.dfb');
    result = await buildRich(blobPath, dir);
    reader = await DfbReader.open(await FileRangeReader.open(blobPath));
  });
  afterAll(async () => {
    await reader?.close();
    await cleanup();
  });

  it('reports a consistent WriteResult', async () => {
    const blob = await readFile(blobPath);
    expect(result.size).toBe(blob.length);
    expect(result.digest).toBe(sha256Digest(blob));
    expect(result.tocDigest).toBe(
      sha256Digest(blob.subarray(result.tocOffset, result.tocOffset + result.tocSize)),
    );
    expect(result.tocOffset).toBe(result.storedDataBytes);
    expect(result.blockSize).toBe(16 * 1024);
    expect(result.blocks).toBe(reader.toc.blockCount);
    // unique contents: passwd(12) + su(4) + wall(3) + ok(2) + big + hello(5) + one + two + x + c
    expect(result.dataBytes).toBe(12 + 4 + 3 + 2 + bigContent.length + 5 + 3 + 3 + 1 + 1);
    expect(result.dedupedFiles).toBe(2); // passwd.bak, big.copy
    expect(result.entries).toBe([...reader.toc.walk()].length);
    // no temp files or partial output left behind
    expect((await readdir(dir)).sort()).toEqual(['rich.dfb']);
    // the annotation digest is accepted
    const again = await DfbReader.open(await FileRangeReader.open(blobPath), {
      expectedTocDigest: result.tocDigest,
    });
    await again.close();
  });

  it('keeps root attributes and implicit parents', () => {
    const toc = reader.toc;
    const root = toc.stat(1);
    expect(root).toMatchObject({
      type: EntryType.Dir,
      mode: 0o1777,
      uid: 5,
      gid: 6,
      mtimeSec: 42,
      mtimeNsec: 7,
    });
    expect(root.implicit).toBe(false);
    const bin = toc.stat(toc.lookup('bin')!);
    expect(bin).toMatchObject({
      type: EntryType.Dir,
      mode: 0o755,
      uid: 0,
      gid: 0,
      mtimeSec: 0,
      mtimeNsec: 0,
      implicit: true,
    });
    expect(toc.stat(toc.lookup('etc')!).implicit).toBe(false);
    expect(toc.lookup('/')).toBe(1);
    expect(toc.lookup('')).toBe(1);
    expect(toc.lookup('./etc/')).toBe(toc.lookup('etc'));
    expect(toc.lookup('etc/../bin')).toBe(toc.lookup('bin'));
    expect(toc.lookup('etc/passwd/x')).toBeUndefined();
    expect(toc.lookup('nope')).toBeUndefined();
    expect(toc.lookup('..')).toBe(1);
    expect(toc.lookup('x'.repeat(5000))).toBeUndefined();
    expect(toc.lookup('😀'.repeat(2000))).toBeUndefined();
    expect(toc.lookupChild(1, 'etc')).toBe(toc.lookup('etc'));
    expect(toc.lookupChild(1, Buffer.from('etc'))).toBe(toc.lookup('etc'));
    expect(toc.lookupChild(1, 'et')).toBeUndefined();
    expect(toc.lookupChild(1, 'etcc')).toBeUndefined();
    expect(toc.lookupChild(toc.lookup('etc')!, 'passwd')).toBe(toc.lookup('etc/passwd'));
  });

  it('round-trips regular files, empty files and dedup', async () => {
    const toc = reader.toc;
    const p = toc.stat(toc.lookup('etc/passwd')!);
    const bak = toc.stat(toc.lookup('etc/passwd.bak')!);
    expect(p.ino).not.toBe(bak.ino);
    expect(bak.dataOffset).toBe(p.dataOffset);
    expect((await reader.readFile(p.ino, 0, 100)).toString()).toBe('root:x:0:0:\n');
    const e = toc.stat(toc.lookup('etc/empty')!);
    expect(e).toMatchObject({ type: EntryType.File, size: 0, nlink: 1 });
    expect((await reader.readFile(e.ino, 0, 10)).length).toBe(0);
    const copies = [toc.lookup('usr/lib/big')!, toc.lookup('usr/lib/big.copy')!];
    for (const ino of copies) {
      expect((await reader.readFile(ino, 0, Infinity)).equals(bigContent)).toBe(true);
      const parts: Buffer[] = [];
      for await (const c of reader.fileStream(ino)) parts.push(c);
      expect(Buffer.concat(parts).equals(bigContent)).toBe(true);
    }
    expect(toc.stat(copies[0]!).dataOffset).toBe(toc.stat(copies[1]!).dataOffset);
  });

  it('round-trips hard links as one inode with nlink', () => {
    const toc = reader.toc;
    const a = toc.lookup('usr/lib/big')!;
    expect(toc.lookup('usr/lib/big.link')).toBe(a);
    expect(toc.lookup('usr/lib/big.link2')).toBe(a);
    expect(toc.stat(a).nlink).toBe(3);
  });

  it('round-trips symlinks, devices, fifos, whiteouts and opaque dirs', () => {
    const toc = reader.toc;
    const sh = toc.stat(toc.lookup('bin/sh')!);
    expect(sh).toMatchObject({ type: EntryType.Symlink, mode: 0o777, size: '/usr/bin/busybox'.length });
    expect(toc.readlink(sh.ino)).toBe('/usr/bin/busybox');
    expect(toc.stat(toc.lookup('dev/null')!)).toMatchObject({
      type: EntryType.CharDev,
      devMajor: 1,
      devMinor: 3,
      mode: 0o666,
    });
    expect(toc.stat(toc.lookup('dev/sda')!)).toMatchObject({
      type: EntryType.BlockDev,
      devMajor: 8,
      devMinor: 0xfffff,
    });
    expect(toc.stat(toc.lookup('run/fifo')!)).toMatchObject({ type: EntryType.Fifo, mode: 0o600 });
    expect(toc.stat(toc.lookup('var/gone')!)).toMatchObject({ type: EntryType.Whiteout });
    const cache = toc.stat(toc.lookup('var/cache')!);
    expect(cache).toMatchObject({ type: EntryType.Dir, opaque: true, implicit: false, mode: 0o700 });
    expect(toc.stat(toc.lookup('var')!).opaque).toBe(false);
  });

  it('round-trips modes, ids and times', () => {
    const toc = reader.toc;
    expect(toc.stat(toc.lookup('usr/bin/su')!)).toMatchObject({
      mode: 0o4755,
      uid: 4_000_000_000,
      gid: 4_294_967_295,
    });
    expect(toc.stat(toc.lookup('usr/bin/wall')!)).toMatchObject({
      mode: 0o2755,
      mtimeSec: -1,
      mtimeNsec: 999_999_999,
    });
    expect(toc.stat(toc.lookup('usr/old')!)).toMatchObject({ mtimeSec: 2 ** 40, mtimeNsec: 1 });
  });

  it('round-trips long non-ASCII names and binary xattrs', async () => {
    const toc = reader.toc;
    const ino = toc.lookup(`usr/share/${longName}`)!;
    expect(ino).toBeDefined();
    expect(toc.readdir(toc.lookup('usr/share')!).map((e) => e.name)).toEqual([longName]);
    const x = toc.xattrs(ino);
    expect([...x.keys()]).toEqual(['security.capability', 'trusted.overlay.x', 'user.empty']);
    expect(x.get('security.capability')).toEqual(Buffer.from([0, 0, 0, 2, 0xff, 0, 0x80, 0]));
    expect(x.get('trusted.overlay.x')).toEqual(Buffer.from([0xc3, 0x28]));
    expect(x.get('user.empty')!.length).toBe(0);
    expect(toc.xattrs(toc.lookup('usr/share')!).get('user.dir')).toEqual(Buffer.from('d'));
    expect(toc.xattrs(1).size).toBe(0);
    expect((await reader.readFile(ino, 1, 3)).toString()).toBe('ell');
  });

  it('applies tar replacement semantics', async () => {
    const toc = reader.toc;
    const f = toc.lookup('opt/f')!;
    expect((await reader.readFile(f, 0, 10)).toString()).toBe('two');
    const old = toc.lookup('opt/f.old')!;
    expect(old).not.toBe(f);
    expect((await reader.readFile(old, 0, 10)).toString()).toBe('one');
    expect(toc.stat(f).nlink).toBe(1);
    expect(toc.stat(old).nlink).toBe(1);
    const d = toc.stat(toc.lookup('opt/d')!);
    expect(d).toMatchObject({ type: EntryType.Dir, mode: 0o750, uid: 9 });
    expect(toc.readdir(d.ino)).toEqual([{ name: 'child', ino: toc.lookup('opt/d/child') }]);
  });

  it('walks depth-first, parents first, sorted, and readdir is sorted by bytes', () => {
    const toc = reader.toc;
    const paths = [...toc.walk()].map((e) => e.path);
    expect(paths.slice(0, 3)).toEqual(['bin', 'bin/sh', 'dev']);
    const seen = new Set<string>();
    for (const p of paths) {
      const parent = p.includes('/') ? p.slice(0, p.lastIndexOf('/')) : '';
      if (parent) expect(seen.has(parent)).toBe(true);
      seen.add(p);
      expect(toc.lookup(p)).toBeDefined();
    }
    for (const { ino } of toc.walk()) {
      if (toc.stat(ino).type !== EntryType.Dir) continue;
      const names = toc.readdir(ino).map((e) => Buffer.from(e.name));
      for (let i = 1; i < names.length; i++) expect(Buffer.compare(names[i - 1]!, names[i]!)).toBeLessThan(0);
      const subdirs = toc.readdir(ino).filter((e) => toc.stat(e.ino).type === EntryType.Dir).length;
      expect(toc.stat(ino).nlink).toBe(2 + subdirs);
    }
  });

  it('rejects misuse with DfError', async () => {
    const toc = reader.toc;
    expect(() => toc.stat(0)).toThrow(/no inode/);
    expect(() => toc.stat(toc.inodeCount + 1)).toThrow(/no inode/);
    expect(() => toc.readlink(1)).toThrow(/not a symlink/);
    expect(() => toc.readdir(toc.lookup('etc/passwd')!)).toThrow(/not a directory/);
    await expect(reader.readFile(1, 0, 1)).rejects.toThrow(/not a regular file/);
    expect(() => toc.block(toc.blockCount)).toThrow(/no block/);
    // the allocation-free accessors too (offsets allow i = blockCount: the end of the data)
    expect(toc.blockOffset(toc.blockCount)).toBe(toc.storedDataLength);
    const accessors: Array<(i: number) => unknown> = [
      (i) => toc.blockLength(i),
      (i) => toc.blockStoredLength(i),
      (i) => toc.blockCodec(i),
      (i) => toc.blockSha256(i),
    ];
    for (const f of accessors) {
      expect(() => f(toc.blockCount)).toThrow(/no block/);
      expect(() => f(-1)).toThrow(/no block/);
    }
    expect(() => toc.blockOffset(toc.blockCount + 1)).toThrow(/no block/);
    expect(() => toc.blockStreamOffset(toc.blockCount + 1)).toThrow(/no block/);
  });
});

describe('DfbWriter input checks', () => {
  it('verifies content length, hard link targets and paths', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const w = new DfbWriter({ out: join(dir, 'x.dfb'), tmpDir: dir, workers: 1 });
      await expect(
        w.addFile({ ...base, path: 'short', type: EntryType.File, size: 10 }, chunks(Buffer.from('abc'))),
      ).rejects.toSatisfy((e) => isDfError(e, 'INVALID_ARGUMENT') && /3 bytes, size says 10/.test(e.message));
      await w.abort();
      const w2 = new DfbWriter({ out: join(dir, 'y.dfb'), tmpDir: dir, workers: 1 });
      await expect(
        w2.addFile({ ...base, path: 'long', type: EntryType.File, size: 2 }, chunks(Buffer.from('abc'))),
      ).rejects.toSatisfy((e) => isDfError(e, 'INVALID_ARGUMENT'));
      await expect(w2.finish()).rejects.toSatisfy((e) => isDfError(e));
      await w2.abort();
      const w3 = new DfbWriter({ out: join(dir, 'z.dfb'), tmpDir: dir, workers: 1 });
      expect(() => w3.addHardlink('a', 'missing')).toThrow(/not in the layer/);
      w3.addEntry(dirMeta('d'));
      expect(() => w3.addHardlink('a', 'd')).toThrow(/directory/);
      expect(() => w3.addEntry(dirMeta('../escape'))).toThrow(/'\.\.'/);
      expect(() => w3.addEntry({ ...base, path: 'l', type: EntryType.Symlink })).toThrow(/no target/);
      expect(() => new DfbWriter({ out: join(dir, 'q'), tmpDir: dir, blockSize: 65537 })).toThrow(
        /power of two/,
      );
      await w3.abort();
      expect((await readdir(dir)).length).toBe(0);
    } finally {
      await cleanup();
    }
  });

  it('reports progress and stops on an aborted signal', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const ac = new AbortController();
      const seen: number[] = [];
      const w = new DfbWriter({
        out: join(dir, 'x.dfb'),
        tmpDir: dir,
        workers: 1,
        signal: ac.signal,
        onProgress: (p) => seen.push(p.bytesIn),
      });
      await w.addFile(
        { ...base, path: 'a', type: EntryType.File, size: 10_000 },
        chunks(Buffer.alloc(10_000, 1), 1000),
      );
      expect(seen.at(-1)).toBe(10_000);
      expect(seen.length).toBe(10);
      async function* abortMidway(): AsyncGenerator<Buffer> {
        yield Buffer.alloc(100);
        ac.abort();
        yield Buffer.alloc(100);
      }
      await expect(
        w.addFile({ ...base, path: 'b', type: EntryType.File, size: 200 }, abortMidway()),
      ).rejects.toSatisfy((e) => isDfError(e, 'ABORTED'));
      await expect(w.finish()).rejects.toSatisfy((e) => isDfError(e));
      await w.abort();
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await cleanup();
    }
  });

  it('abort removes partial output and spool files while a file is being written', async () => {
    const { dir, cleanup } = await tempDir();
    try {
      const w = new DfbWriter({ out: join(dir, 'x.dfb'), tmpDir: dir, workers: 1, blockSize: 16384 });
      // A content of a size already seen is spooled (a new size streams straight into the blocks).
      await w.addFile(
        { ...base, path: 'a', type: EntryType.File, size: (5 << 20) + 1 },
        chunks(pseudoRandom((5 << 20) + 1, 3, false), 1 << 16),
      );
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      async function* slow(): AsyncGenerator<Buffer> {
        yield Buffer.alloc(5 << 20, 1);
        await gate;
        yield Buffer.alloc(1, 1);
      }
      const p = w.addFile({ ...base, path: 'b', type: EntryType.File, size: (5 << 20) + 1 }, slow());
      p.catch(() => undefined);
      await new Promise((r) => setTimeout(r, 200));
      expect((await readdir(dir)).some((n) => n.startsWith('dfb-spool-'))).toBe(true);
      await w.abort();
      release();
      await expect(p).rejects.toSatisfy((e) => isDfError(e));
      await new Promise((r) => setTimeout(r, 50));
      expect(await readdir(dir)).toEqual([]);
    } finally {
      await cleanup();
    }
  });
});
