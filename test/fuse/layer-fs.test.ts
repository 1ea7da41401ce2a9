import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constants as fsc } from 'node:fs';
import { DfError } from '../../src/errors.js';
import { Errno } from '../../src/fuse/errno.js';
import { LayerFs, makedev } from '../../src/fuse/layer-fs.js';
import { TestBinding, type TestMount } from './test-binding.js';
import {
  S_IFBLK,
  S_IFCHR,
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFMT,
  S_IFREG,
  type Attr,
} from '../../src/fuse/attr.js';
import { writeDfb } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { BIG, DfbFileReader, RICH } from './layer.js';

let cleanup: () => Promise<void>;
let reader: DfbFileReader;
let fs: LayerFs;
let m: TestMount;

beforeAll(async () => {
  const t = await tempDir();
  cleanup = t.cleanup;
  reader = await DfbFileReader.open((await writeDfb(t.dir, 'rich', RICH)).path);
  fs = new LayerFs({ toc: reader.toc, reader, readTimeoutMs: 300 });
  m = await new TestBinding().mount('/mnt/test', fs);
});

afterAll(async () => {
  await m?.unmount();
  await reader?.close();
  await cleanup?.();
});

const attr = (path: string): Attr => {
  const a = m.getattr(path);
  if (typeof a === 'number') throw new Error(`getattr ${path}: ${a}`);
  return a;
};

describe('LayerFs: attributes', () => {
  it('root is inode 1, a directory', () => {
    const a = attr('/');
    expect(a.ino).toBe(1);
    expect(a.mode & S_IFMT).toBe(S_IFDIR);
  });

  it('every entry type with the TOC mode, owner and mtime', () => {
    const f = attr('/etc/hostname');
    expect(f.mode).toBe(S_IFREG | 0o644);
    expect([f.uid, f.gid, f.size, f.nlink]).toEqual([1000, 1001, 7, 1]);
    expect([f.mtimeSec, f.mtimeNsec]).toEqual([1_700_000_000, 123_456_789]);
    expect(attr('/bin/busybox').mode).toBe(S_IFREG | 0o4755);
    expect(attr('/etc').mode).toBe(S_IFDIR | 0o755);
    expect(attr('/var/cache').mode).toBe(S_IFDIR | 0o700);
    const l = attr('/usr/bin/sh');
    expect(l.mode & S_IFMT).toBe(S_IFLNK);
    expect(l.size).toBe('../../bin/busybox'.length);
    const c = attr('/dev/null');
    expect(c.mode).toBe(S_IFCHR | 0o666);
    expect(c.rdev).toBe(makedev(1, 3));
    const b = attr('/dev/sda1');
    expect(b.mode).toBe(S_IFBLK | 0o660);
    expect(b.rdev).toBe(makedev(8, 1));
    expect(attr('/run/fifo').mode).toBe(S_IFIFO | 0o600);
  });

  it('makedev matches glibc', () => {
    expect(makedev(1, 3)).toBe(0x103);
    expect(makedev(8, 1)).toBe(0x801);
    expect(makedev(259, 0x12345)).toBe((0x12345 & 0xff) | (259 << 8) | ((0x12345 & ~0xff) << 12));
  });

  it('a whiteout is a character device 0/0 with mode bits 0', () => {
    const w = attr('/etc/removed');
    expect(w.mode).toBe(S_IFCHR);
    expect(w.rdev).toBe(0);
  });

  it('hard links share the inode and its nlink', () => {
    const a = attr('/bin/busybox');
    expect(attr('/bin/ls').ino).toBe(a.ino);
    expect(attr('/usr/bin/cat').ino).toBe(a.ino);
    expect(a.nlink).toBe(3);
  });

  it('directories have nlink 2 + subdirectories', () => {
    expect(attr('/usr').nlink).toBe(3);
    expect(attr('/etc').nlink).toBe(2);
  });

  it('lookup by parent inode and name', () => {
    const etc = attr('/etc');
    const r = fs.lookup(etc.ino, 'hostname');
    expect(typeof r === 'number' ? r : r.ino).toBe(attr('/etc/hostname').ino);
    expect(fs.lookup(etc.ino, 'nope')).toBe(Errno.ENOENT);
    expect(fs.lookup(attr('/etc/hostname').ino, 'x')).toBe(Errno.ENOTDIR);
    const up = fs.lookup(etc.ino, '..');
    expect(typeof up === 'number' ? up : up.ino).toBe(1);
  });

  it('ENOENT and ENOTDIR on paths', () => {
    expect(m.getattr('/nope')).toBe(Errno.ENOENT);
    expect(m.getattr('/etc/nope/x')).toBe(Errno.ENOENT);
    expect(m.getattr('/etc/hostname/x')).toBe(Errno.ENOTDIR);
    expect(fs.getattr(999_999)).toBe(Errno.ENOENT);
  });
});

describe('LayerFs: directories', () => {
  it('readdir lists ., .. and the children sorted, with inode numbers and types', () => {
    const r = m.readdir('/etc');
    if (typeof r === 'number') throw new Error(String(r));
    expect(r.map((e) => e.name)).toEqual(['.', '..', 'empty', 'hostname', 'removed']);
    expect(r[0]!.ino).toBe(attr('/etc').ino);
    expect(r[1]!.ino).toBe(1);
    expect(r.find((e) => e.name === 'removed')!.attr.mode).toBe(S_IFCHR);
  });

  it('readdir and opendir of a file are ENOTDIR', () => {
    expect(m.readdir('/etc/hostname')).toBe(Errno.ENOTDIR);
    expect(m.opendir('/etc/hostname')).toBe(Errno.ENOTDIR);
    expect(m.opendir('/etc')).toBe(0);
  });
});

describe('LayerFs: files', () => {
  it('reads whole files and ranges, across blocks', async () => {
    expect((await m.readFile('/etc/hostname')) as Buffer).toEqual(Buffer.from('dfnode\n'));
    expect((await m.readFile('/etc/empty')) as Buffer).toEqual(Buffer.alloc(0));
    expect((await m.readFile('/bin/busybox', 4096)) as Buffer).toEqual(BIG);
    expect((await m.read('/usr/bin/cat', 16_000, 40_000)) as Buffer).toEqual(BIG.subarray(16_000, 56_000));
  });

  it('read at or past EOF is empty; a read crossing EOF is short', async () => {
    expect(((await m.read('/etc/hostname', 7, 100)) as Buffer).length).toBe(0);
    expect(((await m.read('/etc/hostname', 1000, 100)) as Buffer).length).toBe(0);
    expect((await m.read('/etc/hostname', 3, 100)) as Buffer).toEqual(Buffer.from('ode\n'));
  });

  it('open for writing is EROFS, opening a directory EISDIR, reading one EISDIR', async () => {
    expect(m.open('/etc/hostname', fsc.O_RDONLY)).toBe(0);
    expect(m.open('/etc/hostname', fsc.O_WRONLY)).toBe(Errno.EROFS);
    expect(m.open('/etc/hostname', fsc.O_RDWR)).toBe(Errno.EROFS);
    expect(m.open('/etc/hostname', fsc.O_RDONLY | fsc.O_TRUNC)).toBe(Errno.EROFS);
    expect(m.open('/etc', fsc.O_RDONLY)).toBe(Errno.EISDIR);
    expect(await m.read('/etc', 0, 10)).toBe(Errno.EISDIR);
    expect(await m.read('/usr/bin/sh', 0, 10)).toBe(Errno.EINVAL);
    expect(m.access('/etc/hostname', fsc.W_OK)).toBe(Errno.EROFS);
    expect(m.access('/etc/hostname', fsc.R_OK)).toBe(0);
    expect(m.readOnly()).toBe(Errno.EROFS);
  });

  it('readlink', () => {
    expect(m.readlink('/usr/bin/sh')).toBe('../../bin/busybox');
    expect(m.readlink('/etc/hostname')).toBe(Errno.EINVAL);
    expect(m.readlink('/nope')).toBe(Errno.ENOENT);
  });
});

describe('LayerFs: xattrs', () => {
  it('stored xattrs incl. binary and empty values', () => {
    expect(m.listxattr('/bin/busybox')).toEqual(['security.capability', 'user.bin', 'user.empty']);
    expect(m.getxattr('/bin/busybox', 'user.bin')).toEqual(Buffer.from([0, 255, 0, 128]));
    expect(m.getxattr('/bin/busybox', 'user.empty')).toEqual(Buffer.alloc(0));
    expect((m.getxattr('/bin/busybox', 'security.capability') as Buffer).length).toBe(20);
    expect(m.getxattr('/bin/ls', 'user.bin')).toEqual(Buffer.from([0, 255, 0, 128]));
    expect(m.getxattr('/etc', 'user.dir')).toEqual(Buffer.from('d'));
  });

  it('absent xattrs are ENODATA; no xattrs is an empty list', () => {
    expect(m.getxattr('/bin/busybox', 'user.nope')).toBe(Errno.ENODATA);
    expect(m.getxattr('/etc', 'trusted.overlay.opaque')).toBe(Errno.ENODATA);
    expect(m.listxattr('/etc/hostname')).toEqual([]);
    expect(m.getxattr('/nope', 'user.a')).toBe(Errno.ENOENT);
  });

  it('opaque directories have trusted.overlay.opaque=y', () => {
    expect(m.getxattr('/var/cache', 'trusted.overlay.opaque')).toEqual(Buffer.from('y'));
    expect(m.listxattr('/var/cache')).toContain('trusted.overlay.opaque');
  });
});

describe('LayerFs: statfs', () => {
  it('counts inodes and blocks, read-only, nothing free', () => {
    const s = m.statfs();
    if (typeof s === 'number') throw new Error(String(s));
    expect(s.files).toBe(reader.toc.inodeCount);
    expect(s.bsize).toBe(4096);
    // busybox counted once although it has three names
    expect(s.blocks).toBeGreaterThanOrEqual(Math.ceil(BIG.length / 4096));
    expect(s.blocks).toBeLessThan(Math.ceil(BIG.length / 4096) * 2);
    expect([s.bfree, s.bavail, s.ffree, s.flag]).toEqual([0, 0, 0, 1]);
  });
});

describe('LayerFs: failures', () => {
  it('a rejecting reader gives EIO (ENOSPC for a full disk), and the next read works', async () => {
    reader.fail = new DfError('NETWORK', 'registry unreachable');
    expect(await m.read('/bin/busybox', 0, 100)).toBe(Errno.EIO);
    reader.fail = DfError.timeout('timed out');
    expect(await m.read('/bin/busybox', 0, 100)).toBe(Errno.EIO);
    reader.fail = DfError.corrupt('bad block');
    expect(await m.read('/bin/busybox', 0, 100)).toBe(Errno.EIO);
    reader.fail = new DfError('NO_SPACE', 'disk full');
    expect(await m.read('/bin/busybox', 0, 100)).toBe(Errno.ENOSPC);
    reader.fail = undefined;
    expect(await m.read('/bin/busybox', 0, 100)).toEqual(BIG.subarray(0, 100));
  });

  it('a reader that never answers gives EIO after readTimeoutMs', async () => {
    reader.fail = 'hang';
    try {
      expect(await m.read('/bin/busybox', 0, 100)).toBe(Errno.EIO);
    } finally {
      reader.fail = undefined;
    }
  });

  it('exceptions in handlers become EIO, never escape', async () => {
    const t = await tempDir();
    try {
      const r = await DfbFileReader.open((await writeDfb(t.dir, 'x', RICH)).path);
      const bad = new LayerFs({
        toc: r.toc,
        reader: {
          toc: r.toc,
          read: () => {
            throw new TypeError('bug in the reader');
          },
        },
      });
      const bm = await new TestBinding().mount('/mnt/bad', bad);
      const ino = bm.getattr('/etc/hostname') as Attr;
      expect(await bm.read('/etc/hostname', 0, 10)).toBe(Errno.EIO);
      // the TOC itself failing
      const toc = r.toc as unknown as { stat: (ino: number) => unknown; readdir: (ino: number) => unknown };
      toc.stat = () => {
        throw new RangeError('boom');
      };
      toc.readdir = () => {
        throw new Error('boom');
      };
      expect(bm.getattr('/etc/hostname')).toBe(Errno.EIO);
      expect(bad.getattr(ino.ino)).toBe(Errno.EIO);
      expect(bm.readdir('/etc')).toBe(Errno.EIO);
      expect(await bm.read('/etc/hostname', 0, 10)).toBe(Errno.EIO);
      expect(bm.listxattr('/var/cache')).toBe(Errno.EIO);
      await bm.unmount();
      expect(await bm.check()).toBe(false);
      await r.close();
    } finally {
      await t.cleanup();
    }
  });
});
