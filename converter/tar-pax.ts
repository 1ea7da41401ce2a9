import { DfError } from '../src/errors.js';

/** PAX extended headers: records kept as raw bytes, times with nanoseconds, xattrs and their limits. */

/** Parses PAX records ("%d %s=%s\n"), keeping values as raw bytes. */
export function parsePax(buf: Buffer, offset: number): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let pos = 0;
  while (pos < buf.length) {
    if (buf[pos] === 0) break; // padding
    const sp = buf.indexOf(0x20, pos);
    if (sp < 0) throw DfError.corrupt(`tar PAX header at byte ${offset}: malformed record`);
    const len = parseInt(buf.subarray(pos, sp).toString('latin1'), 10);
    if (!Number.isFinite(len) || len <= sp - pos + 1 || pos + len > buf.length || buf[pos + len - 1] !== 0x0a)
      throw DfError.corrupt(`tar PAX header at byte ${offset}: malformed record length`);
    const rec = buf.subarray(sp + 1, pos + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq < 0) throw DfError.corrupt(`tar PAX header at byte ${offset}: record without '='`);
    out.set(rec.subarray(0, eq).toString('utf8'), rec.subarray(eq + 1));
    pos += len;
  }
  return out;
}

export function parsePaxTime(v: Buffer): { sec: number; nsec: number } | undefined {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(v.toString('latin1'));
  if (!m) return undefined;
  const sign = m[1] === '-' ? -1 : 1;
  let sec = parseInt(m[2]!, 10);
  let nsec = m[3] ? parseInt((m[3] + '000000000').slice(0, 9), 10) : 0;
  if (sign < 0) {
    // -1.25 means 1.25 s before the epoch: sec -2, nsec 0.75e9.
    if (nsec > 0) {
      sec = -(sec + 1);
      nsec = 1e9 - nsec;
    } else sec = -sec;
  }
  // Beyond ±2^53 seconds a number loses precision; no file system holds such a time anyway.
  if (!Number.isSafeInteger(sec)) return undefined;
  return { sec, nsec };
}

/** Largest PAX (x, g) or GNU long-name (L, K) header body read, and the cap on accumulated global PAX records. */
export const MAX_EXTENDED_HEADER = 1024 * 1024;
/** Linux limits (XATTR_NAME_MAX, XATTR_SIZE_MAX): longer names or values cannot be set on any file system. */
export const XATTR_NAME_MAX = 255;
export const XATTR_SIZE_MAX = 64 * 1024;
/** Per entry: xattrs kept and their bytes (names + values); layers hold a handful, a crafted tar thousands. */
export const MAX_ENTRY_XATTRS = 128;
export const MAX_ENTRY_XATTR_BYTES = 256 * 1024;

/** The xattrs named in PAX records, values copied out of the header body (which is not retained). */
export function xattrsOf(records: Map<string, Buffer>): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  for (const [k, v] of records) {
    if (k.startsWith('SCHILY.xattr.')) out.set(k.slice('SCHILY.xattr.'.length), Buffer.from(v));
    else if (k.startsWith('LIBARCHIVE.xattr.')) {
      let name: string;
      try {
        name = decodeURIComponent(k.slice('LIBARCHIVE.xattr.'.length));
      } catch {
        throw DfError.corrupt(
          `tar PAX record ${JSON.stringify(k)}: the xattr name is not valid URI encoding`,
        );
      }
      out.set(name, Buffer.from(v.toString('latin1'), 'base64'));
    }
  }
  return out;
}

export function hasXattrRecords(records: Map<string, Buffer>): boolean {
  for (const k of records.keys())
    if (k.startsWith('SCHILY.xattr.') || k.startsWith('LIBARCHIVE.xattr.')) return true;
  return false;
}

/** Refuses xattrs no file system can hold and sets big enough to multiply memory across entries. */
export function checkXattrs(xattrs: Map<string, Buffer>, where: string): void {
  if (xattrs.size > MAX_ENTRY_XATTRS)
    throw DfError.unsupported(
      `${where} has ${xattrs.size} xattrs; at most ${MAX_ENTRY_XATTRS} per entry are supported`,
    );
  let total = 0;
  for (const [k, v] of xattrs) {
    const nameLength = Buffer.byteLength(k, 'utf8');
    if (nameLength === 0 || nameLength > XATTR_NAME_MAX)
      throw DfError.unsupported(
        `${where}: xattr name ${JSON.stringify(k.slice(0, 64))} is ${nameLength} bytes; Linux allows 1 to ${XATTR_NAME_MAX}`,
      );
    if (v.length > XATTR_SIZE_MAX)
      throw DfError.unsupported(
        `${where}: xattr ${JSON.stringify(k)} has a ${v.length}-byte value; Linux allows at most ${XATTR_SIZE_MAX}`,
      );
    total += nameLength + v.length;
  }
  if (total > MAX_ENTRY_XATTR_BYTES)
    throw DfError.unsupported(
      `${where} has ${total} bytes of xattrs; at most ${MAX_ENTRY_XATTR_BYTES} per entry are supported`,
    );
}

export function paxBytes(records: Map<string, Buffer>): number {
  let n = 0;
  for (const [k, v] of records) n += k.length + v.length;
  return n;
}
