/**
 * Shared vocabulary of the DFB format. docs/format.md is the normative description.
 */

/** Media type of a DFB layer blob in an OCI manifest. */
export const DFB_LAYER_MEDIA_TYPE = 'application/vnd.oci.image.layer.dfnode.dfb.v1';

/** Annotations dfconvert puts on each converted layer descriptor. */
export const Annotations = {
  /** sha256 digest of the compressed TOC bytes (as stored in the blob). */
  tocDigest: 'dev.dfnode.dfb.toc.digest',
  /** Byte offset of the TOC in the blob. */
  tocOffset: 'dev.dfnode.dfb.toc.offset',
  /** Nominal uncompressed block size. */
  blockSize: 'dev.dfnode.dfb.block-size',
  /** Digest of the source (gzip or plain tar) layer this blob was converted from. */
  sourceDigest: 'dev.dfnode.source.digest',
  /** Media type of the source layer. */
  sourceMediaType: 'dev.dfnode.source.media-type',
  /** Size of the source layer blob. */
  sourceSize: 'dev.dfnode.source.size',
  /** Uncompressed tar digest (diff ID) of the source layer. */
  diffId: 'dev.dfnode.source.diff-id',
  /** Canonical string of the conversion options; a layer is reconverted only when it changes. */
  options: 'dev.dfnode.convert.options',
  /** Version of dfconvert that produced the blob. */
  converterVersion: 'dev.dfnode.convert.version',
} as const;

/** Entry types stored in the TOC. Hard links are not a type: several names share one inode. */
export enum EntryType {
  File = 1,
  Dir = 2,
  Symlink = 3,
  CharDev = 4,
  BlockDev = 5,
  Fifo = 6,
  /** A whiteout (`.wh.NAME` in the tar): the name is stored without the prefix. */
  Whiteout = 7,
}

/** Block codecs. */
export enum Codec {
  /** Stored bytes are the uncompressed bytes. */
  Raw = 0,
  /** Stored bytes are u32le(uncompressed length) followed by one LZ4 block (LZ4 block format, no frame). */
  Lz4Block = 1,
}

/**
 * Random access to the bytes of a blob: a local file, an HTTP range reader, a cache.
 * Implementations return exactly `length` bytes or throw a DfError.
 */
export interface RangeReader {
  /** Total size when known without a request. */
  readonly size?: number;
  read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer>;
  /** The last `length` bytes (one suffix range request over HTTP) and the total blob size. */
  readTail(length: number, signal?: AbortSignal): Promise<{ data: Buffer; size: number }>;
  close?(): Promise<void>;
}

/** TOC codecs (footer field `tocCodec`). */
export enum TocCodec {
  /** Stored TOC bytes are the encoded TOC. */
  None = 0,
  /** Stored TOC bytes are a zlib stream (RFC 1950, node:zlib deflateSync) of the encoded TOC. */
  Zlib = 1,
}

/** Inode flags (TOC inode record byte 1). */
export const InodeFlags = {
  /** Directory is opaque (`.wh..wh..opq` in the tar). */
  opaque: 1,
  /** Directory had no tar entry: created because a descendant needed it. */
  implicit: 2,
} as const;

/** Default and allowed uncompressed block sizes for writers. */
export const DEFAULT_BLOCK_SIZE = 64 * 1024;
export const MIN_BLOCK_SIZE = 16 * 1024;
export const MAX_BLOCK_SIZE = 4 * 1024 * 1024;
/** Readers reject any block table entry whose uncompressed length exceeds this (bounds reader memory). */
export const MAX_BLOCK_LENGTH = 64 * 1024 * 1024;

/** Metadata of one tar entry as the writer receives it. */
export interface EntryMeta {
  /** Normalized relative path ('a/b/c'); '.' or '' addresses the root directory (sets its attributes). */
  path: string;
  type: EntryType;
  /** Permission bits incl. setuid/setgid/sticky (07777); file type bits are ignored. */
  mode: number;
  uid: number;
  gid: number;
  mtimeSec: number;
  mtimeNsec: number;
  linkTarget?: string;
  devMajor?: number;
  devMinor?: number;
  xattrs?: Map<string, Buffer>;
}

export interface WriteResult {
  /** sha256:hex of the whole blob. */
  digest: string;
  /** Blob size in bytes. */
  size: number;
  /** sha256:hex of the stored (compressed) TOC bytes. */
  tocDigest: string;
  tocOffset: number;
  /** Stored TOC length. */
  tocSize: number;
  blockSize: number;
  blocks: number;
  /** Length of the uncompressed data stream. */
  dataBytes: number;
  /** Sum of the stored block lengths (= tocOffset). */
  storedDataBytes: number;
  /** Regular-file inodes in the TOC. */
  files: number;
  /** Names in the TOC (dirents, so hard links count once per name), excluding the root. */
  entries: number;
  /** Non-empty regular files whose content was already in the stream. */
  dedupedFiles: number;
}
