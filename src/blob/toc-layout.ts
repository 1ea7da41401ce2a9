/**
 * Byte layout of the encoded (uncompressed) TOC, shared by the encoder and the decoder.
 * docs/format.md, "TOC encoding", is the normative description. All integers little-endian.
 */

export const TOC_MAGIC = 0x434f5444; // "DTOC" read as u32le

/** Header: every field is a u32 except the two u64 at the end. */
export const H = {
  magic: 0,
  headerSize: 4,
  blockCount: 8,
  blockRecordSize: 12,
  inodeCount: 16,
  inodeRecordSize: 20,
  direntCount: 24,
  direntRecordSize: 28,
  xattrCount: 32,
  xattrRecordSize: 36,
  stringsLength: 40,
  reserved: 44,
  dataLength: 48,
  storedDataLength: 56,
  SIZE: 64,
} as const;

/**
 * Header fields added in 1.1 (present when headerSize >= PX.END): the prefetch ranges, a packed array of
 * `count` (u64 stream offset, u64 length) pairs at `offset` in the string table. A 1.0 reader skips them
 * (headerSize is the stride to the block table) and never looks at those string-table bytes.
 */
export const PX = {
  offset: 64, // u32, into the string table
  count: 68, // u32
  END: 72,
  // 72..79 reserved
  SIZE: 80, // header size written by 1.1 writers when there are prefetch ranges
  RANGE: 16, // bytes per range
} as const;

/** Most prefetch ranges a reader accepts (a writer merges ranges to stay below it). */
export const MAX_PREFETCH_RANGES = 65_536;

/** Block record. */
export const B = {
  storedLength: 0, // u32
  length: 4, // u32, uncompressed
  codec: 8, // u8
  // 9..15 reserved
  sha256: 16, // 32 bytes, of the stored bytes
  SIZE: 48,
} as const;

/** Inode record. `a`/`b` depend on the type (see docs/format.md). */
export const I = {
  type: 0, // u8 EntryType
  flags: 1, // u8 InodeFlags
  // 2..3 reserved
  mode: 4, // u32, 07777 bits
  uid: 8, // u32
  gid: 12, // u32
  mtimeSec: 16, // i64
  mtimeNsec: 24, // u32 < 1e9
  nlink: 28, // u32
  size: 32, // u64
  a: 40, // file: u64 dataOffset (a+b); dir: u32 firstDirent; symlink: u32 target offset; dev: u32 major
  b: 44, // dir: u32 childCount; symlink: u32 target length; dev: u32 minor
  parent: 48, // u32: dir: parent inode (root: 1); others: 0
  xattrFirst: 52, // u32
  xattrCount: 56, // u32
  // 60..63 reserved
  SIZE: 64,
} as const;

/** Directory entry record. */
export const D = {
  nameOffset: 0, // u32 into strings
  nameLength: 4, // u32
  ino: 8, // u32
  SIZE: 12,
} as const;

/** Extended attribute record. */
export const X = {
  keyOffset: 0,
  keyLength: 4,
  valueOffset: 8,
  valueLength: 12,
  SIZE: 16,
} as const;

/** Longest name component a reader accepts. */
export const MAX_NAME_LENGTH = 4096;
