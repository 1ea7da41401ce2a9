import { createHash } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { FOOTER_SIZE } from '../../src/blob/footer.js';
import { DfbReader } from '../../src/blob/reader.js';
import { Toc } from '../../src/blob/toc.js';
import { B, D, H, I, X } from '../../src/blob/toc-layout.js';
import { Codec, EntryType } from '../../src/blob/types.js';
import { isDfError, type ErrorCode } from '../../src/errors.js';
import { exercise } from './exercise.js';
import { sha256Digest } from '../helpers/digest.js';
import { smallRichBlob } from '../helpers/dfb.js';
import { BufferRangeReader, parts, withToc } from './util.js';
import { flipBits } from '../helpers/bytes.js';

let blob: Buffer;
let toc: Toc;

beforeAll(async () => {
  blob = await smallRichBlob();
  toc = Toc.decode(parts(blob).toc);
});

const open = (b: Buffer, expectedTocDigest?: string) =>
  DfbReader.open(new BufferRangeReader(b), expectedTocDigest ? { expectedTocDigest } : {});

async function expectError(p: Promise<unknown>, code: ErrorCode, re: RegExp): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e) => e,
  );
  expect(err, 'expected a DfError').toBeDefined();
  if (process.env.DFB_SHOW) console.log(re, err?.message);
  if (!isDfError(err, code) || !re.test(err.message)) {
    throw new Error(
      `expected DfError ${code} matching ${re}, got ${err?.code ?? err?.name}: ${err?.message}`,
    );
  }
}

function mutateFooter(fn: (f: Buffer) => void): Buffer {
  const b = Buffer.from(blob);
  fn(b.subarray(b.length - FOOTER_SIZE));
  return b;
}

/** Section bases of the decoded TOC (see docs/format.md). */
function layout(t: Buffer) {
  const blocks = H.SIZE;
  const inodes = blocks + t.readUInt32LE(H.blockCount) * B.SIZE;
  const dirents = inodes + t.readUInt32LE(H.inodeCount) * I.SIZE;
  const xattrs = dirents + t.readUInt32LE(H.direntCount) * D.SIZE;
  const strings = xattrs + t.readUInt32LE(H.xattrCount) * X.SIZE;
  return { blocks, inodes, dirents, xattrs, strings, inode: (ino: number) => inodes + (ino - 1) * I.SIZE };
}

/** Applies fn to a copy of the decoded TOC, re-deflates it and fixes footer + digest: only the decoder can object. */
function mutateToc(fn: (t: Buffer, l: ReturnType<typeof layout>) => void): Buffer {
  const t = Buffer.from(parts(blob).toc);
  fn(t, layout(t));
  return withToc(blob, t, 16 * 1024);
}

describe('footer corruption', () => {
  it('rejects a bad magic', () =>
    expectError(open(mutateFooter((f) => flipBits(f, 0, 1))), 'CORRUPT', /bad magic/));
  it('rejects an unknown major version', () =>
    expectError(
      open(mutateFooter((f) => f.writeUInt16LE(2, 8))),
      'UNSUPPORTED',
      /version 2\.0 is not supported/,
    ));
  it('accepts a higher minor version, unknown flags and reserved bytes', async () => {
    const b = mutateFooter((f) => {
      f.writeUInt16LE(9, 10);
      f.writeUInt32LE(0xffff_ffff, 12);
      f.fill(0xab, 80, 96);
    });
    const r = await open(b);
    expect(r.footer.minor).toBe(9);
    await exercise(r);
  });
  it('rejects wrong TOC offsets and lengths', async () => {
    await expectError(
      open(mutateFooter((f) => f.writeBigUInt64LE(f.readBigUInt64LE(24) + 1n, 24))),
      'CORRUPT',
      /does not end where the footer starts/,
    );
    await expectError(
      open(mutateFooter((f) => f.writeBigUInt64LE(f.readBigUInt64LE(32) - 1n, 32))),
      'CORRUPT',
      /does not end where/,
    );
    await expectError(
      open(mutateFooter((f) => f.writeBigUInt64LE(1n << 60n, 24))),
      'CORRUPT',
      /out of range/,
    );
    await expectError(
      open(mutateFooter((f) => f.writeBigUInt64LE(f.readBigUInt64LE(40) + 1n, 40))),
      'CORRUPT',
      /decompressed to/,
    );
    await expectError(
      open(mutateFooter((f) => f.writeBigUInt64LE(1n << 40n, 40))),
      'CORRUPT',
      /exceeds the limit/,
    );
    await expectError(open(mutateFooter((f) => f.writeUInt32LE(9, 20))), 'CORRUPT', /unknown TOC codec/);
    await expectError(open(mutateFooter((f) => f.writeUInt32LE(0, 16))), 'CORRUPT', /block size/);
  });
  it('rejects truncated blobs', async () => {
    await expectError(open(Buffer.alloc(0)), 'CORRUPT', /smaller than a footer/);
    await expectError(open(blob.subarray(0, 50)), 'CORRUPT', /smaller than a footer/);
    await expectError(open(blob.subarray(0, blob.length - 1)), 'CORRUPT', /bad magic/);
    await expectError(open(blob.subarray(1)), 'CORRUPT', /does not end where the footer starts/);
    await expectError(open(blob.subarray(blob.length - FOOTER_SIZE)), 'CORRUPT', /does not end where/);
  });
});

describe('TOC corruption', () => {
  it('detects a flipped stored TOC byte by digest', async () => {
    const { data } = parts(blob);
    const b = Buffer.from(blob);
    flipBits(b, data.length + 10, 0x40);
    await expectError(open(b), 'DIGEST_MISMATCH', /DFB TOC: digest mismatch/);
  });
  it('checks the expected (annotation) TOC digest', async () => {
    const good = sha256Digest(parts(blob).storedToc);
    await open(blob, good);
    await expectError(open(blob, 'sha256:' + '0'.repeat(64)), 'DIGEST_MISMATCH', /layer annotation/);
  });
  it('rejects a stored TOC that does not inflate, even with a matching digest', async () => {
    const { data } = parts(blob);
    const garbage = Buffer.from('this is not zlib data at all');
    const f = Buffer.from(blob.subarray(blob.length - FOOTER_SIZE));
    f.writeBigUInt64LE(BigInt(garbage.length), 32);
    createHash('sha256').update(garbage).digest().copy(f, 48);
    await expectError(open(Buffer.concat([data, garbage, f])), 'CORRUPT', /does not decompress/);
  });

  const cases: Array<[string, (t: Buffer, l: ReturnType<typeof layout>) => void, RegExp]> = [
    ['bad TOC magic', (t) => flipBits(t, 0, 1), /bad magic/],
    [
      'inode count larger than the buffer',
      (t) => t.writeUInt32LE(t.readUInt32LE(H.inodeCount) + 1, H.inodeCount),
      /section sizes add up/,
    ],
    ['record size too small', (t) => t.writeUInt32LE(8, H.direntRecordSize), /record size/],
    [
      'string table length',
      (t) => t.writeUInt32LE(t.readUInt32LE(H.stringsLength) - 1, H.stringsLength),
      /section sizes/,
    ],
    [
      'block length not matching the header',
      (t, l) => t.writeUInt32LE(t.readUInt32LE(l.blocks + B.length) - 1, l.blocks + B.length),
      /add up to|impossible/,
    ],
    ['unknown block codec', (t, l) => (t[l.blocks + B.codec] = 7), /unknown codec 7/],
    [
      'raw block with stored != length',
      (t, l) => {
        const n = t.readUInt32LE(H.blockCount);
        for (let i = 0; i < n; i++)
          if (t[l.blocks + i * B.SIZE + B.codec] === Codec.Lz4Block) {
            t[l.blocks + i * B.SIZE + B.codec] = Codec.Raw;
            return;
          }
      },
      /raw block/,
    ],
    [
      'stored data length vs footer',
      (t) => t.writeUInt32LE(t.readUInt32LE(H.storedDataLength) + 1, H.storedDataLength),
      /header says/,
    ],
    ['root not a directory', (t, l) => (t[l.inode(1) + I.type] = EntryType.File), /root/],
    ['unknown inode type', (t, l) => (t[l.inode(2) + I.type] = 99), /unknown type 99/],
    ['mode with file type bits', (t, l) => t.writeUInt32LE(0o100644, l.inode(2) + I.mode), /outside 07777/],
    ['nanoseconds >= 1e9', (t, l) => t.writeUInt32LE(1e9, l.inode(2) + I.mtimeNsec), /nanoseconds/],
    [
      'file data past the stream',
      (t, l) => {
        const ino = toc.lookup('usr/lib/big')!;
        t.writeUInt32LE(t.readUInt32LE(l.inode(ino) + I.size) + 1, l.inode(ino) + I.size);
      },
      /past the end of the data stream/,
    ],
    [
      'symlink target out of range',
      (t, l) => t.writeUInt32LE(0xffff_fff0, l.inode(toc.lookup('usr/bin/sh')!) + I.a),
      /symlink target/,
    ],
    ['child range out of range', (t, l) => t.writeUInt32LE(1_000_000, l.inode(1) + I.b), /child range/],
    [
      'overlapping child ranges',
      (t, l) => t.writeUInt32LE(t.readUInt32LE(l.inode(1) + I.a), l.inode(toc.lookup('etc')!) + I.a),
      /claimed by directories|order/,
    ],
    ['dirent pointing at the root', (t, l) => t.writeUInt32LE(1, l.dirents + D.ino), /inode 1 out of range/],
    ['dirent inode out of range', (t, l) => t.writeUInt32LE(0xffff_ffff, l.dirents + D.ino), /out of range/],
    [
      'dirent name out of range',
      (t, l) => t.writeUInt32LE(0x7fff_ffff, l.dirents + D.nameOffset),
      /name reference/,
    ],
    ['empty name', (t, l) => t.writeUInt32LE(0, l.dirents + D.nameLength), /name reference/],
    [
      'name with a slash',
      (t, l) => (t[l.strings + t.readUInt32LE(l.dirents + D.nameOffset)] = 0x2f),
      /'\/' or NUL/,
    ],
    [
      'name with a NUL',
      (t, l) => (t[l.strings + t.readUInt32LE(l.dirents + D.nameOffset) + 1] = 0),
      /'\/' or NUL/,
    ],
    [
      "name '..'",
      (t, l) => {
        t.writeUInt32LE(2, l.dirents + D.nameLength);
        t.write('..', l.strings + t.readUInt32LE(l.dirents + D.nameOffset), 'latin1');
      },
      /name is '\.' or '\.\.'/,
    ],
    [
      'name that is not UTF-8',
      (t, l) => (t[l.strings + t.readUInt32LE(l.dirents + D.nameOffset)] = 0xff),
      /not valid UTF-8/,
    ],
    [
      'unsorted names',
      (t, l) => {
        const a = Buffer.from(t.subarray(l.dirents, l.dirents + D.SIZE));
        t.copy(t, l.dirents, l.dirents + D.SIZE, l.dirents + 2 * D.SIZE);
        a.copy(t, l.dirents + D.SIZE);
      },
      /ascending name order/,
    ],
    [
      'directory with two names',
      (t, l) => {
        const root = l.inode(1);
        const first = t.readUInt32LE(root + I.a);
        // point the second root entry at the directory the first one names
        t.writeUInt32LE(
          t.readUInt32LE(l.dirents + first * D.SIZE + D.ino),
          l.dirents + (first + 1) * D.SIZE + D.ino,
        );
      },
      /has 2 names|no name|nlink/,
    ],
    [
      'wrong parent field',
      (t, l) => t.writeUInt32LE(toc.lookup('usr')!, l.inode(toc.lookup('etc')!) + I.parent),
      /parent field/,
    ],
    [
      'directory cycle detached from the root',
      (t, l) => {
        // usr/lib becomes its own child: its dirent in usr now names a file, and lib lists itself
        const usr = toc.lookup('usr')!;
        const lib = toc.lookup('usr/lib')!;
        const libFirst = t.readUInt32LE(l.inode(lib) + I.a);
        t.writeUInt32LE(lib, l.dirents + libFirst * D.SIZE + D.ino);
        t.writeUInt32LE(lib, l.inode(lib) + I.parent);
        const usrFirst = t.readUInt32LE(l.inode(usr) + I.a);
        const usrCount = t.readUInt32LE(l.inode(usr) + I.b);
        for (let i = usrFirst; i < usrFirst + usrCount; i++) {
          if (t.readUInt32LE(l.dirents + i * D.SIZE + D.ino) === lib)
            t.writeUInt32LE(toc.lookup('usr/empty')!, l.dirents + i * D.SIZE + D.ino);
        }
      },
      /not reachable from the root|cycle/,
    ],
    [
      'wrong nlink',
      (t, l) => t.writeUInt32LE(1, l.inode(toc.lookup('usr/lib/big')!) + I.nlink),
      /nlink 1 but 2 names/,
    ],
    ['wrong directory nlink', (t, l) => t.writeUInt32LE(99, l.inode(1) + I.nlink), /nlink 99/],
    ['xattr range not tiling', (t, l) => t.writeUInt32LE(1, l.inode(1) + I.xattrCount), /xattr/],
    ['xattr key out of range', (t, l) => t.writeUInt32LE(0xffff_fff0, l.xattrs + X.keyOffset), /xattr 0/],
    [
      'xattr keys unsorted',
      (t, l) => {
        const a = Buffer.from(t.subarray(l.xattrs, l.xattrs + X.SIZE));
        t.copy(t, l.xattrs, l.xattrs + X.SIZE, l.xattrs + 2 * X.SIZE);
        a.copy(t, l.xattrs + X.SIZE);
      },
      /xattr keys not strictly ascending/,
    ],
    [
      'huge u64 size',
      (t, l) => t.writeUInt32LE(0xffff_ffff, l.inode(toc.lookup('usr/lib/big')!) + I.size + 4),
      /size out of range/,
    ],
  ];
  for (const [name, fn, re] of cases) {
    it(`rejects an inconsistent TOC: ${name}`, () => expectError(open(mutateToc(fn)), 'CORRUPT', re));
  }
  it('rejects a truncated decoded TOC', async () => {
    const t = parts(blob).toc;
    for (const n of [0, 10, H.SIZE, t.length - 1]) {
      await expectError(open(withToc(blob, t.subarray(0, n), 16384)), 'CORRUPT', /./);
    }
  });
});

describe('block corruption', () => {
  it('names the block whose stored bytes were flipped', async () => {
    const r0 = await open(blob);
    for (const i of [0, 3, toc.blockCount - 1]) {
      const b = Buffer.from(blob);
      const blk = toc.block(i);
      flipBits(b, blk.offset + Math.floor(blk.storedLength / 2), 0x01);
      const r = await open(b);
      await expectError(r.readBlock(i), 'DIGEST_MISMATCH', new RegExp(`DFB block ${i}:`));
      await expectError(r.readStoredBlock(i), 'DIGEST_MISMATCH', new RegExp(`DFB block ${i}:`));
      // a file read over that block fails naming it
      const { ino } = [...toc.walk()].find(({ ino }) => {
        const st = toc.stat(ino);
        if (st.type !== EntryType.File || st.size === 0) return false;
        const [a, z] = toc.blocksForRange(st.dataOffset, st.size);
        return a <= i && i <= z;
      })!;
      await expectError(r.readFile(ino, 0, Infinity), 'DIGEST_MISMATCH', new RegExp(`block ${i}`));
      // verifyBlock on bytes from elsewhere
      expect(() =>
        DfbReader.verifyBlock(toc, i, b.subarray(blk.offset, blk.offset + blk.storedLength)),
      ).toThrow(new RegExp(`DFB block ${i}: digest mismatch`));
      expect(() =>
        DfbReader.verifyBlock(toc, i, b.subarray(blk.offset, blk.offset + blk.storedLength - 1)),
      ).toThrow(new RegExp(`DFB block ${i}: .* block table says`));
      // the good copy verifies
      expect(DfbReader.verifyBlock(toc, i, await r0.readStoredBlock(i)).length).toBe(blk.length);
    }
  });

  it('rejects LZ4 garbage whose hash matches the table (CORRUPT, no crash)', async () => {
    const lz4 = Array.from({ length: toc.blockCount }, (_, i) => i).filter(
      (i) => toc.block(i).codec === Codec.Lz4Block,
    );
    expect(lz4.length).toBeGreaterThan(0);
    for (const i of lz4) {
      const blk = toc.block(i);
      for (const mut of [
        (s: Buffer) => s.writeUInt32LE(blk.length + 1, 0), // length prefix disagrees with the table
        (s: Buffer) => s.fill(0xff, 4), // literal run past the end
        (s: Buffer) => s.fill(0x0f, 4, 12), // match offsets before the start
      ]) {
        const stored = Buffer.from(blob.subarray(blk.offset, blk.offset + blk.storedLength));
        mut(stored);
        const t = Buffer.from(parts(blob).toc);
        createHash('sha256')
          .update(stored)
          .digest()
          .copy(t, H.SIZE + i * B.SIZE + B.sha256);
        const b = withToc(blob, t, 16384);
        stored.copy(b, blk.offset);
        const r = await open(b);
        await expectError(r.readBlock(i), 'CORRUPT', new RegExp(`DFB block ${i}:`));
      }
    }
  });
});
