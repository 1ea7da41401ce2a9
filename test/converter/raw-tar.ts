// Tar members built field by field, for tests that need headers no archiver writes (huge PAX headers,
// base-256 numbers, a global header repeated over thousands of entries).
import { encodeHeader, paxRecord } from '../fixtures/tar-builder.js';

const BLOCK = 512;

/** Recomputes a header's checksum after its bytes were changed. */
export function rechecksum(h: Buffer): Buffer {
  h.write(' '.repeat(8), 148, 'ascii');
  let sum = 0;
  for (const byte of h) sum += byte;
  h.write(sum.toString(8).padStart(6, '0') + '\u0000 ', 148, 'ascii');
  return h;
}

/** A header and its body padded to whole blocks. */
export function member(typeflag: string, name: string, body: Buffer = Buffer.alloc(0)): Buffer {
  const h = encodeHeader({ name, mode: 0o644, uid: 0, gid: 0, size: body.length, mtime: 1, typeflag });
  const pad = (BLOCK - (body.length % BLOCK)) % BLOCK;
  return Buffer.concat([h, body, Buffer.alloc(pad)]);
}

/** A PAX header member (`x` for the next entry, `g` for all that follow) with the given records. */
export function pax(typeflag: 'x' | 'g', records: Record<string, Buffer | string>): Buffer {
  return member(typeflag, 'pax', Buffer.concat(Object.entries(records).map(([k, v]) => paxRecord(k, v))));
}

/** Members followed by the end-of-archive marker. */
export function tarOf(...members: Buffer[]): Buffer {
  return Buffer.concat([...members, Buffer.alloc(2 * BLOCK)]);
}

/** A 12-byte GNU base-256 field: 0x80 (positive) or 0xff (negative) lead byte, two's complement. */
export function base256(value: bigint, width = 12): Buffer {
  const b = Buffer.alloc(width);
  let v = BigInt.asUintN(width * 8, value);
  for (let i = width - 1; i >= 0; i--) {
    b[i] = Number(v & 0xffn);
    v >>= 8n;
  }
  b[0] = value < 0n ? b[0]! | 0xc0 : (b[0]! & 0x3f) | 0x80;
  return b;
}

/** A header with one numeric field (mode 100, uid 108, gid 116, size 124, mtime 136) replaced. */
export function withField(m: Buffer, off: number, field: Buffer): Buffer {
  const out = Buffer.from(m);
  field.copy(out, off);
  rechecksum(out.subarray(0, BLOCK));
  return out;
}
