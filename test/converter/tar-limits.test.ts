import { describe, expect, it } from 'vitest';
import { readTar, type TarHeader } from '../../converter/tar-reader.js';
import { MAX_ENTRY_XATTRS, MAX_EXTENDED_HEADER, XATTR_SIZE_MAX } from '../../converter/tar-pax.js';
import { base256, member, pax, tarOf, withField } from './raw-tar.js';

async function headers(tar: Buffer): Promise<TarHeader[]> {
  async function* src() {
    for (let i = 0; i < tar.length; i += 64 * 1024) yield tar.subarray(i, i + 64 * 1024);
  }
  const out: TarHeader[] = [];
  for await (const { header } of readTar(src())) out.push(header);
  return out;
}

describe('tar reader: GNU base-256 numbers', () => {
  it('reads a negative mtime (before the epoch)', async () => {
    const got = await headers(
      tarOf(
        withField(member('0', 'old'), 136, base256(-1n)),
        withField(member('0', 'older'), 136, base256(-86_400n * 365n * 10n)),
        withField(member('0', 'big'), 136, base256(1n << 40n)),
      ),
    );
    expect(got.map((h) => [h.name, h.mtimeSec])).toEqual([
      ['old', -1],
      ['older', -315_360_000],
      ['big', 2 ** 40],
    ]);
  });

  it('refuses a negative size or uid, and values beyond 2^53, with CORRUPT naming the field', async () => {
    await expect(headers(tarOf(withField(member('0', 'f'), 124, base256(-5n))))).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/negative size/),
    });
    await expect(headers(tarOf(withField(member('0', 'f'), 108, base256(-1n, 8))))).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/negative uid/),
    });
    await expect(headers(tarOf(withField(member('0', 'f'), 136, base256(1n << 80n))))).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/mtime .* out of range/),
    });
  });
});

describe('tar reader: PAX limits', () => {
  it('shares a global PAX xattr among the entries that follow instead of copying it into each', async () => {
    const value = Buffer.alloc(XATTR_SIZE_MAX, 0x41);
    const files = Array.from({ length: 2000 }, (_, i) => member('0', `f${i}`));
    const got = await headers(tarOf(pax('g', { 'SCHILY.xattr.user.big': value }), ...files));
    expect(got).toHaveLength(2000);
    const first = got[0]!.xattrs.get('user.big')!;
    expect(first.equals(value)).toBe(true);
    // One value retained for 2000 entries (2000 copies would be 128 MiB).
    for (const h of got) expect(h.xattrs.get('user.big')).toBe(first);
  });

  it('keeps an entry-local xattr on top of the global ones', async () => {
    const got = await headers(
      tarOf(
        pax('g', { 'SCHILY.xattr.user.a': 'global' }),
        pax('x', { 'SCHILY.xattr.user.b': 'local' }),
        member('0', 'one'),
        member('0', 'two'),
      ),
    );
    expect(Object.fromEntries([...got[0]!.xattrs].map(([k, v]) => [k, v.toString()]))).toEqual({
      'user.a': 'global',
      'user.b': 'local',
    });
    expect([...got[1]!.xattrs.keys()]).toEqual(['user.a']);
  });

  it('refuses an xattr value longer than the kernel allows, naming the entry', async () => {
    const tar = tarOf(
      pax('x', { 'SCHILY.xattr.user.big': Buffer.alloc(XATTR_SIZE_MAX + 1) }),
      member('0', 'etc/victim'),
    );
    await expect(headers(tar)).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: expect.stringMatching(/"etc\/victim".*user\.big.*65537-byte value/),
    });
    const global = tarOf(
      pax('g', { 'SCHILY.xattr.user.big': Buffer.alloc(XATTR_SIZE_MAX + 1) }),
      member('0', 'f'),
    );
    await expect(headers(global)).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: expect.stringMatching(/global PAX header at byte 0/),
    });
  });

  it('refuses too many xattrs on one entry', async () => {
    const records: Record<string, string> = {};
    for (let i = 0; i <= MAX_ENTRY_XATTRS; i++) records[`SCHILY.xattr.user.k${i}`] = 'v';
    await expect(headers(tarOf(pax('x', records), member('0', 'many')))).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: expect.stringMatching(/"many".*129 xattrs/),
    });
  });

  it('refuses a PAX header, and global records added up over several headers, beyond the limit', async () => {
    const big = pax('x', { comment: Buffer.alloc(MAX_EXTENDED_HEADER) });
    await expect(headers(tarOf(big, member('0', 'f')))).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: expect.stringMatching(/PAX header at byte 0 is \d+ bytes/),
    });
    const parts = Array.from({ length: 5 }, (_, i) => pax('g', { [`comment${i}`]: Buffer.alloc(300_000) }));
    await expect(headers(tarOf(...parts, member('0', 'f')))).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: expect.stringMatching(/global records add up/),
    });
  });
});
