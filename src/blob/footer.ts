import { DfError } from '../errors.js';
import { TocCodec } from './types.js';

/**
 * The fixed-size footer at the end of every DFB blob (docs/format.md, "Footer").
 * All integers little-endian.
 *
 *   0  magic[8]        89 44 46 42 0D 0A 1A 0A  ("\x89DFB\r\n\x1a\n")
 *   8  u16 major       1
 *  10  u16 minor       0, or 1 when the TOC has prefetch ranges
 *  12  u32 flags       0 (unknown bits are ignored)
 *  16  u32 blockSize   nominal uncompressed block size
 *  20  u32 tocCodec    TocCodec
 *  24  u64 tocOffset
 *  32  u64 tocStoredLength
 *  40  u64 tocLength   (uncompressed)
 *  48  sha256[32]      of the stored TOC bytes
 *  80  reserved[16]    zero; later minor versions may define them, readers ignore them
 */
export const FOOTER_SIZE = 96;
export const FOOTER_MAGIC = Buffer.from([0x89, 0x44, 0x46, 0x42, 0x0d, 0x0a, 0x1a, 0x0a]);
export const FORMAT_MAJOR = 1;
/** The newest minor version this code knows (1.1 added the TOC's prefetch ranges). */
export const FORMAT_MINOR = 1;
/** Readers refuse TOCs larger than this when decompressed (bounds memory on a hostile footer). */
export const MAX_TOC_LENGTH = 1024 * 1024 * 1024;

export interface Footer {
  major: number;
  minor: number;
  flags: number;
  blockSize: number;
  tocCodec: TocCodec;
  tocOffset: number;
  tocStoredLength: number;
  tocLength: number;
  tocSha256: Buffer;
}

/** `minor` defaults to 0 (a 1.0 blob); a writer whose TOC has the 1.1 header passes FORMAT_MINOR. */
export function encodeFooter(
  f: Omit<Footer, 'major' | 'minor'> & { major?: number; minor?: number },
): Buffer {
  const b = Buffer.alloc(FOOTER_SIZE);
  FOOTER_MAGIC.copy(b, 0);
  b.writeUInt16LE(f.major ?? FORMAT_MAJOR, 8);
  b.writeUInt16LE(f.minor ?? 0, 10);
  b.writeUInt32LE(f.flags >>> 0, 12);
  b.writeUInt32LE(f.blockSize, 16);
  b.writeUInt32LE(f.tocCodec, 20);
  b.writeBigUInt64LE(BigInt(f.tocOffset), 24);
  b.writeBigUInt64LE(BigInt(f.tocStoredLength), 32);
  b.writeBigUInt64LE(BigInt(f.tocLength), 40);
  if (f.tocSha256.length !== 32) throw DfError.internal('footer: TOC sha256 must be 32 bytes');
  f.tocSha256.copy(b, 48);
  return b;
}

function u64(b: Buffer, off: number, what: string): number {
  const v = b.readBigUInt64LE(off);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) throw DfError.corrupt(`DFB footer: ${what} ${v} is out of range`);
  return Number(v);
}

/**
 * Decodes and checks a footer. `blobSize` (when known) is checked against the TOC position:
 * the TOC must end exactly where the footer starts.
 */
export function decodeFooter(buf: Buffer, blobSize?: number): Footer {
  if (buf.length < FOOTER_SIZE) {
    throw DfError.corrupt(
      `DFB footer: blob too small (${buf.length} bytes, a footer alone is ${FOOTER_SIZE}); not a DFB blob or truncated`,
    );
  }
  const b = buf.length === FOOTER_SIZE ? buf : buf.subarray(buf.length - FOOTER_SIZE);
  if (!b.subarray(0, 8).equals(FOOTER_MAGIC)) {
    throw DfError.corrupt('DFB footer: bad magic; not a DFB blob, or the blob is truncated');
  }
  const major = b.readUInt16LE(8);
  const minor = b.readUInt16LE(10);
  if (major !== FORMAT_MAJOR) {
    throw DfError.unsupported(
      `DFB footer: format version ${major}.${minor} is not supported (this reader knows ${FORMAT_MAJOR}.x); upgrade dfnode`,
    );
  }
  const flags = b.readUInt32LE(12);
  const blockSize = b.readUInt32LE(16);
  const tocCodec = b.readUInt32LE(20);
  const tocOffset = u64(b, 24, 'TOC offset');
  const tocStoredLength = u64(b, 32, 'TOC stored length');
  const tocLength = u64(b, 40, 'TOC length');
  const tocSha256 = Buffer.from(b.subarray(48, 80));
  if (blockSize === 0 || blockSize > 1 << 30)
    throw DfError.corrupt(`DFB footer: bad nominal block size ${blockSize}`);
  if (tocCodec !== TocCodec.None && tocCodec !== TocCodec.Zlib) {
    throw DfError.corrupt(`DFB footer: unknown TOC codec ${tocCodec}`);
  }
  if (tocLength > MAX_TOC_LENGTH)
    throw DfError.corrupt(`DFB footer: TOC length ${tocLength} exceeds the limit`);
  if (tocStoredLength === 0 || tocStoredLength > MAX_TOC_LENGTH) {
    throw DfError.corrupt(`DFB footer: bad TOC stored length ${tocStoredLength}`);
  }
  if (tocCodec === TocCodec.None && tocStoredLength !== tocLength) {
    throw DfError.corrupt('DFB footer: uncompressed TOC with stored length != length');
  }
  if (blobSize !== undefined && tocOffset + tocStoredLength + FOOTER_SIZE !== blobSize) {
    throw DfError.corrupt(
      `DFB footer: TOC at ${tocOffset}+${tocStoredLength} does not end where the footer starts (blob size ${blobSize}); truncated or corrupt blob`,
    );
  }
  return { major, minor, flags, blockSize, tocCodec, tocOffset, tocStoredLength, tocLength, tocSha256 };
}
