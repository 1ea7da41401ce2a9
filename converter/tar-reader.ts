import { DfError } from '../src/errors.js';
import {
  checkXattrs,
  hasXattrRecords,
  MAX_EXTENDED_HEADER,
  parsePax,
  parsePaxTime,
  paxBytes,
  xattrsOf,
} from './tar-pax.js';

/**
 * A streaming tar reader that keeps what layer fidelity needs and general-purpose readers lose:
 * PAX values as raw bytes (binary xattrs such as security.capability), nanosecond mtimes,
 * GNU long names, base-256 numbers, and header checksums (a corrupt or truncated tar is an error).
 */

export type TarEntryType = 'file' | 'hardlink' | 'symlink' | 'char' | 'block' | 'dir' | 'fifo';

export interface TarHeader {
  name: string;
  type: TarEntryType;
  mode: number;
  uid: number;
  gid: number;
  size: number;
  mtimeSec: number;
  mtimeNsec: number;
  linkname: string;
  devMajor: number;
  devMinor: number;
  xattrs: Map<string, Buffer>;
  /** Byte offset of the header in the uncompressed tar stream (for error messages). */
  offset: number;
}

export interface TarEntry {
  header: TarHeader;
  /** The entry's data; must be consumed (or skipped by moving on) before the next entry is read. */
  body: AsyncIterable<Buffer>;
}

const BLOCK = 512;
const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Buffers chunks from an async source and hands out exact byte counts without copying when possible. */
class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0;
  private length = 0;
  private done = false;
  position = 0;

  constructor(
    private readonly it: AsyncIterator<Buffer>,
    private readonly onConsumed?: (chunk: Buffer) => void,
  ) {}

  private async fill(n: number): Promise<boolean> {
    while (this.length < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else if (r.value.length) {
        const b = Buffer.isBuffer(r.value) ? r.value : Buffer.from(r.value);
        this.chunks.push(b);
        this.length += b.length;
      }
    }
    return this.length >= n;
  }

  /** Drops the first chunk, all of whose bytes were taken. */
  private consumed(): void {
    const c = this.chunks.shift()!; // not inside `onConsumed?.(…)`: that would skip the shift without a callback
    this.head = 0;
    this.onConsumed?.(c);
  }

  /** Reads exactly n bytes, or returns undefined at a clean end of input (0 bytes available). */
  async readExact(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill(n))) {
      if (this.length === 0) return undefined;
      throw DfError.corrupt(
        `truncated tar: unexpected end of layer data at byte ${this.position + this.length}`,
      );
    }
    return this.take(n);
  }

  /** Up to n bytes (at least 1) or undefined at end of input. */
  async readSome(n: number): Promise<Buffer | undefined> {
    if (this.length === 0 && !(await this.fill(1))) return undefined;
    return this.take(Math.min(n, this.length));
  }

  private take(n: number): Buffer {
    const first = this.chunks[0]!;
    let out: Buffer;
    if (first.length - this.head >= n) {
      out = first.subarray(this.head, this.head + n);
      this.head += n;
      if (this.head === first.length) {
        this.consumed();
      }
    } else {
      out = Buffer.allocUnsafe(n);
      let off = 0;
      while (off < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length - this.head, n - off);
        c.copy(out, off, this.head, this.head + k);
        off += k;
        this.head += k;
        if (this.head === c.length) {
          this.consumed();
        }
      }
    }
    this.length -= n;
    this.position += n;
    return out;
  }

  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      const b = await this.readSome(Math.min(left, 1 << 20));
      if (!b) throw DfError.corrupt(`truncated tar: unexpected end of layer data at byte ${this.position}`);
      left -= b.length;
    }
  }

  /** Drains the rest of the input (trailing zero padding after the end-of-archive marker). */
  async drain(): Promise<void> {
    while (await this.readSome(1 << 20));
  }
}

function cstring(buf: Buffer, off: number, len: number): Buffer {
  let end = off;
  const max = off + len;
  while (end < max && buf[end] !== 0) end++;
  return buf.subarray(off, end);
}

function decodeName(raw: Buffer, what: string, offset: number): string {
  try {
    return utf8.decode(raw);
  } catch {
    throw DfError.unsupported(
      `tar entry at byte ${offset} has a ${what} that is not valid UTF-8 (${JSON.stringify(raw.toString('latin1'))}); such names are not supported`,
    );
  }
}

function parseNumber(
  buf: Buffer,
  off: number,
  len: number,
  field: string,
  offset: number,
  allowNegative = false,
): number {
  const b0 = buf[off]!;
  if (b0 & 0x80) {
    // GNU base-256: big-endian two's complement over the whole field, the top bit of the first byte marking
    // the encoding and the next bit the sign (as Go's archive/tar reads it: invert when negative, -a-1 == ~a).
    const inv = b0 & 0x40 ? 0xff : 0;
    let v = 0n;
    for (let i = 0; i < len; i++) {
      let byte = buf[off + i]! ^ inv;
      if (i === 0) byte &= 0x7f;
      v = (v << 8n) | BigInt(byte);
    }
    if (inv) v = -v - 1n;
    if (v < 0n && !allowNegative)
      throw DfError.corrupt(
        `tar header at byte ${offset}: negative ${field} (${v}) in a base-256 field; only mtime may be negative`,
      );
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER))
      throw DfError.corrupt(
        `tar header at byte ${offset}: ${field} ${v} is out of range (beyond ±2^53-1) in a base-256 field`,
      );
    return Number(v);
  }
  // Fast path: optional leading spaces, octal digits, then only NULs and spaces.
  let i = off;
  const end = off + len;
  while (i < end && buf[i] === 0x20) i++;
  let v = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = buf[i]!;
    if (c < 0x30 || c > 0x37) break;
    v = v * 8 + (c - 0x30);
    digits++;
  }
  let tailOk = true;
  for (let j = i; j < end; j++)
    if (buf[j] !== 0 && buf[j] !== 0x20) {
      tailOk = false;
      break;
    }
  if (tailOk && digits <= 15) return v;
  const s = buf
    .subarray(off, off + len)
    .toString('latin1')
    .replace(/[\0 ]+$/g, '')
    .replace(/^[ ]+/, '');
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s))
    throw DfError.corrupt(`tar header at byte ${offset}: invalid ${field} field ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function checksumOk(buf: Buffer): boolean {
  const stored = buf
    .subarray(148, 156)
    .toString('latin1')
    .replace(/[\0 ]+$/g, '')
    .trim();
  if (!/^[0-7]+$/.test(stored)) return false;
  const want = parseInt(stored, 8);
  let unsigned = 0;
  let signed = 0;
  for (let i = 0; i < BLOCK; i++) {
    const b = i >= 148 && i < 156 ? 32 : buf[i]!;
    unsigned += b;
    signed += b > 127 ? b - 256 : b;
  }
  return want === unsigned || want === signed;
}

function isZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

const TYPES: Record<string, TarEntryType | undefined> = {
  '0': 'file',
  '\0': 'file',
  '7': 'file',
  '1': 'hardlink',
  '2': 'symlink',
  '3': 'char',
  '4': 'block',
  '5': 'dir',
  '6': 'fifo',
};

/**
 * Iterates the entries of an uncompressed tar stream. Each entry's body must be fully consumed or abandoned
 * before asking for the next entry (the reader skips what is left). `onConsumed` gets each source chunk once
 * the reader has taken all its bytes (views of it handed out as body chunks may still be in use).
 */
export async function* readTar(
  source: AsyncIterable<Buffer>,
  onConsumed?: (chunk: Buffer) => void,
): AsyncGenerator<TarEntry> {
  const q = new ByteQueue(source[Symbol.asyncIterator](), onConsumed);
  let globalPax = new Map<string, Buffer>();
  // Decoded once per global header and shared (not copied) by every entry without xattrs of its own.
  let globalXattrs = new Map<string, Buffer>();
  let pax: Map<string, Buffer> | undefined;
  let longName: Buffer | undefined;
  let longLink: Buffer | undefined;

  for (;;) {
    const offset = q.position;
    const hdr = await q.readExact(BLOCK);
    if (!hdr) throw DfError.corrupt(`truncated tar: missing end-of-archive marker at byte ${offset}`);
    if (isZero(hdr)) {
      const second = await q.readExact(BLOCK).catch(() => undefined);
      if (second && !isZero(second))
        throw DfError.corrupt(`corrupt tar: data after a zero block at byte ${offset}`);
      await q.drain();
      return;
    }
    if (!checksumOk(hdr))
      throw DfError.corrupt(
        `corrupt tar: header checksum mismatch at byte ${offset} (truncated or damaged layer)`,
      );
    const typeflag = String.fromCharCode(hdr[156]!);
    const size = parseNumber(hdr, 124, 12, 'size', offset);
    const padded = Math.ceil(size / BLOCK) * BLOCK;

    if (typeflag === 'x' || typeflag === 'g' || typeflag === 'L' || typeflag === 'K') {
      if (size > MAX_EXTENDED_HEADER)
        throw DfError.unsupported(
          `tar ${typeflag === 'L' || typeflag === 'K' ? 'GNU long name' : 'PAX'} header at byte ${offset} is ${size} bytes; at most ${MAX_EXTENDED_HEADER} are supported`,
        );
      const data = size ? ((await q.readExact(padded)) ?? Buffer.alloc(0)) : Buffer.alloc(0);
      if (size && data.length < padded) throw DfError.corrupt(`truncated tar at byte ${offset}`);
      const body = Buffer.from(data.subarray(0, size));
      if (typeflag === 'x') pax = parsePax(body, offset);
      else if (typeflag === 'g') {
        globalPax = new Map([...globalPax, ...parsePax(body, offset)]);
        if (paxBytes(globalPax) > MAX_EXTENDED_HEADER)
          throw DfError.unsupported(
            `tar global PAX header at byte ${offset}: the global records add up to more than ${MAX_EXTENDED_HEADER} bytes`,
          );
        globalXattrs = xattrsOf(globalPax);
        checkXattrs(globalXattrs, `tar global PAX header at byte ${offset}`);
      } else if (typeflag === 'L') longName = cstring(body, 0, body.length);
      else longLink = cstring(body, 0, body.length);
      continue;
    }

    const type = TYPES[typeflag];
    if (!type) {
      if (typeflag === 'S')
        throw DfError.unsupported(`tar entry at byte ${offset}: GNU sparse files are not supported`);
      if (typeflag === 'V') {
        await q.skip(padded);
        continue;
      }
      throw DfError.unsupported(
        `tar entry at byte ${offset}: unsupported entry type ${JSON.stringify(typeflag)}`,
      );
    }

    const merged = pax ? new Map([...globalPax, ...pax]) : globalPax;
    // PAX sparse files (GNU 0.x/1.0) look like regular files whose data is a sparse map: reading them as
    // files would convert the wrong bytes under the wrong name.
    for (const k of merged.keys())
      if (k.startsWith('GNU.sparse.'))
        throw DfError.unsupported(
          `tar entry at byte ${offset}: PAX sparse files (${k}) are not supported; repack the layer without --sparse`,
        );
    const isUstar = hdr.subarray(257, 262).toString('latin1') === 'ustar';
    let nameRaw = cstring(hdr, 0, 100);
    if (isUstar) {
      const prefix = cstring(hdr, 345, 155);
      if (prefix.length) nameRaw = Buffer.concat([prefix, Buffer.from('/'), nameRaw]);
    }
    if (longName) nameRaw = longName;
    if (merged.has('path')) nameRaw = merged.get('path')!;
    let linkRaw = cstring(hdr, 157, 100);
    if (longLink) linkRaw = longLink;
    if (merged.has('linkpath')) linkRaw = merged.get('linkpath')!;

    const num = (key: string, fallback: number) => {
      const v = merged.get(key);
      if (!v) return fallback;
      const n = Number(v.toString('latin1'));
      if (!Number.isSafeInteger(n) || n < 0)
        throw DfError.corrupt(`tar entry at byte ${offset}: invalid PAX ${key}`);
      return n;
    };
    const entrySize = num('size', size);
    let mtimeSec = parseNumber(hdr, 136, 12, 'mtime', offset, true);
    let mtimeNsec = 0;
    const pm = merged.get('mtime');
    if (pm) {
      const t = parsePaxTime(pm);
      if (!t)
        throw DfError.corrupt(
          `tar entry at byte ${offset}: invalid PAX mtime ${JSON.stringify(pm.toString('latin1').slice(0, 40))} (seconds[.fraction], within ±2^53)`,
        );
      mtimeSec = t.sec;
      mtimeNsec = t.nsec;
    }
    const name = decodeName(nameRaw, 'name', offset);
    let xattrs = globalXattrs;
    if (pax && hasXattrRecords(pax)) {
      xattrs = new Map([...globalXattrs, ...xattrsOf(pax)]);
      checkXattrs(xattrs, `tar entry ${JSON.stringify(name)} at byte ${offset}`);
    }

    const header: TarHeader = {
      name,
      type,
      mode: parseNumber(hdr, 100, 8, 'mode', offset) & 0o7777,
      uid: num('uid', parseNumber(hdr, 108, 8, 'uid', offset)),
      gid: num('gid', parseNumber(hdr, 116, 8, 'gid', offset)),
      size: type === 'file' ? entrySize : 0,
      mtimeSec,
      mtimeNsec,
      linkname: linkRaw.length ? decodeName(linkRaw, 'link target', offset) : '',
      devMajor: type === 'char' || type === 'block' ? parseNumber(hdr, 329, 8, 'devmajor', offset) : 0,
      devMinor: type === 'char' || type === 'block' ? parseNumber(hdr, 337, 8, 'devminor', offset) : 0,
      xattrs,
      offset,
    };
    pax = undefined;
    longName = undefined;
    longLink = undefined;

    // As in Go's archive/tar (what containerd unpacks with): only regular files have data blocks;
    // every other type is header-only whatever its size field says.
    const dataSize = type === 'file' ? entrySize : 0;
    const dataPadded = Math.ceil(dataSize / BLOCK) * BLOCK;
    let remaining = dataSize;
    let consumed = 0;
    const body: AsyncIterable<Buffer> = {
      async *[Symbol.asyncIterator]() {
        while (remaining > 0) {
          const b = await q.readSome(Math.min(remaining, 1 << 20));
          if (!b) throw DfError.corrupt(`truncated tar: ${header.name} ends early (at byte ${q.position})`);
          remaining -= b.length;
          consumed += b.length;
          yield b;
        }
      },
    };
    yield { header, body };
    // Skip whatever the consumer did not read, plus the padding to the next 512-byte boundary.
    await q.skip(dataPadded - consumed);
    remaining = 0;
  }
}
