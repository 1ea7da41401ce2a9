import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  MAX_ENTRY_XATTR_BYTES,
  MAX_ENTRY_XATTRS,
  XATTR_NAME_MAX,
  XATTR_SIZE_MAX,
} from '../../converter/tar-pax.js';
import { readTar } from '../../converter/tar-reader.js';
import { buildTar } from '../fixtures/tar-builder.js';
import { paxRecord } from '../fixtures/tar-builder.js';
import { base256, member, pax, rechecksum, tarOf } from '../converter/raw-tar.js';
import { params, returnsOrDfError, timeoutFor } from './fuzz.js';

// Layers are the image author's: whatever the bytes, the tar reader yields entries whose fields are sane
// (safe integers, nanoseconds below 1e9, xattrs within the kernel's limits) or throws a DfError.

async function readAll(tar: Buffer, chunk: number, readBodies: boolean): Promise<number> {
  async function* src() {
    for (let i = 0; i < tar.length; i += chunk) yield tar.subarray(i, i + chunk);
  }
  let n = 0;
  for await (const { header, body } of readTar(src())) {
    n++;
    expect(Number.isSafeInteger(header.size) && header.size >= 0).toBe(true);
    expect(Number.isSafeInteger(header.mtimeSec)).toBe(true);
    expect(header.mtimeNsec >= 0 && header.mtimeNsec < 1e9).toBe(true);
    expect(Number.isSafeInteger(header.uid) && header.uid >= 0).toBe(true);
    expect(Number.isSafeInteger(header.gid) && header.gid >= 0).toBe(true);
    expect(header.xattrs.size).toBeLessThanOrEqual(MAX_ENTRY_XATTRS);
    let total = 0;
    for (const [k, v] of header.xattrs) {
      expect(Buffer.byteLength(k)).toBeLessThanOrEqual(XATTR_NAME_MAX);
      expect(v.length).toBeLessThanOrEqual(XATTR_SIZE_MAX);
      total += Buffer.byteLength(k) + v.length;
    }
    expect(total).toBeLessThanOrEqual(MAX_ENTRY_XATTR_BYTES);
    if (readBodies) {
      let got = 0;
      for await (const c of body) got += c.length;
      expect(got).toBe(header.size);
    }
  }
  return n;
}

const bytes = (max: number) => fc.uint8Array({ maxLength: max }).map((a) => Buffer.from(a));
const paxKey = fc.oneof(
  fc.constantFrom('path', 'linkpath', 'size', 'mtime', 'uid', 'gid', 'atime', 'comment', 'GNU.sparse.major'),
  fc.string({ maxLength: 12 }).map((s) => `SCHILY.xattr.${s}`),
  fc.string({ maxLength: 12 }).map((s) => `LIBARCHIVE.xattr.${s}`),
  fc.string({ maxLength: 8 }),
);
const paxValue = fc.oneof(
  bytes(40),
  fc.bigInt({ min: -(1n << 70n), max: 1n << 70n }).map((n) => Buffer.from(String(n))),
  fc
    .tuple(
      fc.bigInt({ min: -(1n << 40n), max: 1n << 40n }),
      fc.string({ unit: fc.constantFrom('0', '5', '9'), maxLength: 12 }),
    )
    .map(([s, f]) => Buffer.from(`${s}.${f}`)),
  fc.string({ maxLength: 30 }).map((s) => Buffer.from(s)),
);
const numericField = fc.record({
  off: fc.constantFrom(100, 108, 116, 124, 136, 329, 337),
  value: fc.oneof(
    fc.bigInt({ min: -(1n << 90n), max: 1n << 90n }),
    fc.constantFrom(-1n, 0n, 1n, (1n << 53n) - 1n, 1n << 53n, -(1n << 53n)),
  ),
  octal: fc.boolean(),
});

/** One member: a plain entry with random header edits, a PAX header, a GNU long name, or an odd type. */
const memberArb = fc.oneof(
  fc
    .record({
      type: fc.constantFrom('0', '1', '2', '3', '4', '5', '6', '7', 'S', 'V', 'Z', '\0'),
      name: fc.string({ maxLength: 20 }),
      body: bytes(700),
      field: fc.option(numericField),
      flips: fc.array(fc.record({ at: fc.nat(511), value: fc.nat(255) }), { maxLength: 2 }),
    })
    .map(({ type, name, body, field, flips }) => {
      const m = member(type, name, body);
      const h = m.subarray(0, 512);
      if (field) {
        const width = field.off === 124 || field.off === 136 ? 12 : 8;
        if (field.octal && field.value >= 0n)
          h.write(
            field.value
              .toString(8)
              .slice(-(width - 1))
              .padStart(width - 1, '0') + '\0',
            field.off,
            'latin1',
          );
        else base256(field.value, width).copy(h, field.off);
      }
      for (const f of flips) if (f.at < 148 || f.at >= 156) h[f.at] = f.value;
      rechecksum(h);
      return m;
    }),
  fc
    .record({
      type: fc.constantFrom('x' as const, 'g' as const),
      records: fc.array(fc.tuple(paxKey, paxValue), { maxLength: 6 }),
      garbage: fc.option(bytes(30)),
    })
    .map(({ type, records, garbage }) =>
      member(
        type,
        'pax',
        Buffer.concat([...records.map(([k, v]) => paxRecord(k, v)), garbage ?? Buffer.alloc(0)]),
      ),
    ),
  fc
    .record({ type: fc.constantFrom('L', 'K'), name: bytes(300) })
    .map(({ type, name }) => member(type, '././@LongLink', name)),
);

describe('fuzz: tar reader', () => {
  it(
    'structured archives (PAX, GNU long names, sparse, base-256, odd types) read or fail with a DfError',
    async () => {
      await fc.assert(
        fc.asyncProperty(
          fc.array(memberArb, { minLength: 1, maxLength: 8 }),
          fc.constantFrom(1, 100, 512, 4096, 1 << 20),
          fc.boolean(),
          fc.option(fc.nat(), { freq: 4 }),
          async (members, chunk, readBodies, cut) => {
            let tar = tarOf(...members);
            if (cut !== null) tar = tar.subarray(0, cut % (tar.length + 1));
            await returnsOrDfError(() => readAll(tar, chunk, readBodies));
          },
        ),
        params(),
      );
    },
    timeoutFor(),
  );

  it(
    'a valid layer with random bytes changed reads or fails with a DfError',
    async () => {
      const valid = buildTar([
        { path: 'a/', type: 'directory' },
        { path: `a/${'n'.repeat(150)}`, type: 'file', data: 'x'.repeat(1000), longNames: 'gnu' },
        {
          path: `p/${'q'.repeat(150)}`,
          type: 'file',
          data: 'pax',
          xattrs: { 'user.k': Buffer.from([0, 1, 2]) },
        },
        { path: 'l', type: 'symlink', linkname: 'a' },
        { path: 't', type: 'file', data: '', mtime: { sec: 1, nsec: 5 } },
      ]);
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.record({ at: fc.nat(valid.length - 1), value: fc.nat(255) }), {
            minLength: 1,
            maxLength: 8,
          }),
          fc.boolean(),
          async (edits, fixChecksums) => {
            const t = Buffer.from(valid);
            for (const e of edits) t[e.at] = e.value;
            if (fixChecksums)
              for (const e of edits) {
                const start = e.at - (e.at % 512);
                if (t.subarray(start + 257, start + 262).toString('latin1') === 'ustar')
                  rechecksum(t.subarray(start, start + 512));
              }
            await returnsOrDfError(() => readAll(t, 333, true));
          },
        ),
        params(),
      );
    },
    timeoutFor(),
  );
});

describe('tar reader: fuzz findings kept as examples', () => {
  it('refuses a PAX mtime beyond ±2^53 seconds (was read as an imprecise, unsafe number)', async () => {
    for (const v of ['-9007199254740992', '9007199254740993', '99999999999999999999.5']) {
      const tar = tarOf(pax('x', { mtime: v }), member('0', 'f'));
      await expect(readAll(tar, 512, true)).rejects.toMatchObject({
        code: 'CORRUPT',
        message: expect.stringMatching(/invalid PAX mtime/),
      });
    }
    const ok = tarOf(pax('x', { mtime: '-9007199254740991.5' }), member('0', 'f'));
    await expect(readAll(ok, 512, true)).rejects.toMatchObject({ code: 'CORRUPT' });
    const fine = tarOf(pax('x', { mtime: '-9007199254740990.5' }), member('0', 'f'));
    expect(await readAll(fine, 512, true)).toBe(1);
  });

  it('refuses a LIBARCHIVE.xattr name that is not valid URI encoding (was a URIError)', async () => {
    const tar = tarOf(pax('x', { 'LIBARCHIVE.xattr.user.%E0%A4%A': 'dmFsdWU=' }), member('0', 'f'));
    await expect(readAll(tar, 512, true)).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/not valid URI encoding/),
    });
  });

  it('refuses a PAX sparse file instead of reading its sparse map as the content', async () => {
    const tar = tarOf(
      pax('x', {
        'GNU.sparse.major': '1',
        'GNU.sparse.minor': '0',
        'GNU.sparse.name': 'big',
        'GNU.sparse.realsize': '1048576',
      }),
      member('0', 'GNUSparseFile.0/big', Buffer.from('1\n0\n512\n')),
    );
    await expect(readAll(tar, 512, true)).rejects.toMatchObject({
      code: 'UNSUPPORTED',
      message: expect.stringMatching(/PAX sparse files \(GNU\.sparse\.major\)/),
    });
  });
});
