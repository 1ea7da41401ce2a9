import { describe, expect, it } from 'vitest';
import { readTar, type TarEntry } from '../../converter/tar-reader.js';
import { DfError } from '../../src/errors.js';
import { buildTar, type TarEntry as BuildEntry } from '../fixtures/tar-builder.js';
import { flipBits } from '../helpers/bytes.js';

async function collect(buf: Buffer, chunk = 777): Promise<Array<{ h: TarEntry['header']; data: Buffer }>> {
  async function* src() {
    for (let i = 0; i < buf.length; i += chunk) yield buf.subarray(i, i + chunk);
  }
  const out = [];
  for await (const { header, body } of readTar(src())) {
    const parts: Buffer[] = [];
    for await (const c of body) parts.push(c);
    out.push({ h: header, data: Buffer.concat(parts) });
  }
  return out;
}

describe('tar reader', () => {
  const entries: BuildEntry[] = [
    { path: 'a/', type: 'directory', mode: 0o1755 },
    { path: 'a/file', type: 'file', data: 'hello', mode: 0o4755, uid: 1000, gid: 65534 },
    { path: `long/${'x'.repeat(200)}`, type: 'file', data: 'long' },
    { path: `gnu/${'y'.repeat(200)}`, type: 'file', data: 'gnu', longNames: 'gnu' },
    { path: 'café/日本語.txt', type: 'file', data: 'utf8' },
    {
      path: 'bin',
      type: 'file',
      data: Buffer.alloc(3000, 7),
      xattrs: { 'security.capability': Buffer.from([0, 0xff, 0x80, 1]) },
    },
    { path: 'hl', type: 'link', linkname: 'a/file' },
    { path: 'sym', type: 'symlink', linkname: '../target' },
    { path: 'dev', type: 'character-device', devmajor: 1, devminor: 3 },
    { path: 'fifo', type: 'fifo' },
    { path: 'ns', type: 'file', data: '', mtime: { sec: 1700000000, nsec: 123456789 } },
    { path: 'big-uid', type: 'file', data: '', uid: 3_000_000_000, gid: 3_000_000_001 },
  ];

  it('reads every entry type with metadata, in any chunking', async () => {
    for (const chunk of [1, 511, 512, 4096, 1 << 20]) {
      const got = await collect(buildTar(entries), chunk);
      expect(got.map((g) => g.h.name)).toEqual(entries.map((e) => e.path.replace(/\/$/, '/')));
      const by = new Map(got.map((g) => [g.h.name, g]));
      expect(by.get('a/')!.h.mode).toBe(0o1755);
      expect(by.get('a/file')!.h).toMatchObject({ mode: 0o4755, uid: 1000, gid: 65534, size: 5 });
      expect(by.get('a/file')!.data.toString()).toBe('hello');
      expect(by.get(`gnu/${'y'.repeat(200)}`)!.data.toString()).toBe('gnu');
      expect(by.get('café/日本語.txt')!.data.toString()).toBe('utf8');
      expect(by.get('bin')!.h.xattrs.get('security.capability')).toEqual(Buffer.from([0, 0xff, 0x80, 1]));
      expect(by.get('bin')!.data.equals(Buffer.alloc(3000, 7))).toBe(true);
      expect(by.get('hl')!.h).toMatchObject({ type: 'hardlink', linkname: 'a/file' });
      expect(by.get('sym')!.h).toMatchObject({ type: 'symlink', linkname: '../target' });
      expect(by.get('dev')!.h).toMatchObject({ type: 'char', devMajor: 1, devMinor: 3 });
      expect(by.get('fifo')!.h.type).toBe('fifo');
      expect(by.get('ns')!.h).toMatchObject({ mtimeSec: 1700000000, mtimeNsec: 123456789 });
      expect(by.get('big-uid')!.h).toMatchObject({ uid: 3_000_000_000, gid: 3_000_000_001 });
    }
  });

  it('skips bodies the consumer does not read', async () => {
    const tar = buildTar(entries);
    async function* src() {
      yield tar;
    }
    const names = [];
    for await (const { header } of readTar(src())) names.push(header.name);
    expect(names.length).toBe(entries.length);
  });

  it('rejects a damaged header, a truncated archive and a missing end marker with CORRUPT', async () => {
    const tar = buildTar(entries);
    const bad = Buffer.from(tar);
    flipBits(bad, 0, 0x20); // first header name: checksum no longer matches
    await expect(collect(bad)).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/checksum/),
    });
    await expect(collect(tar.subarray(0, 512 + 100))).rejects.toMatchObject({ code: 'CORRUPT' });
    const noEnd = tar.subarray(0, tar.length - 1024);
    const err = await collect(noEnd).catch((e) => e);
    expect(err).toBeInstanceOf(DfError);
  });
});
