import { createHash } from 'node:crypto';
import { compressSync, uncompressSync } from 'lz4-napi';
import { DfError } from '../errors.js';
import { convertAddon } from './native-codec.js';
import { Codec } from './types.js';

export interface CompressedBlock {
  stored: Buffer;
  codec: Codec;
  sha256: Buffer;
}

/**
 * Compresses one block with lz4-napi (the fallback of compressBatch): LZ4 block format with a u32le length prefix (what lz4-napi compressSync emits),
 * or the raw bytes when LZ4 does not make the block smaller. The hash is over the stored bytes.
 */
export function compressBlock(data: Buffer): CompressedBlock {
  const c = looksIncompressible(data) ? undefined : compressSync(data);
  const useLz4 = c !== undefined && c.length < data.length;
  const stored = useLz4 ? c : data;
  return {
    stored,
    codec: useLz4 ? Codec.Lz4Block : Codec.Raw,
    sha256: createHash('sha256').update(stored).digest(),
  };
}

/** A batch of blocks compressed in place (compressBatch). */
export interface StoredBatch {
  /** Per block: stored length and codec. */
  stored: Uint32Array;
  codecs: Uint8Array;
  /** Per block: SHA-256 of the stored bytes, 32 bytes each. */
  hashes: Uint8Array;
  /** Stored bytes in all, at the front of the buffer. */
  total: number;
}

/**
 * Compresses and hashes the blocks of buf[0, length) (block i is bytes [i*blockSize, min((i+1)*blockSize,
 * length))) and compacts their stored bytes to the front of `buf`, in place. Native (liblz4) when the addon
 * loads, else compressBlock per block; either way deterministic.
 */
export function compressBatch(buf: Buffer, length: number, blockSize: number): StoredBatch {
  const n = Math.ceil(length / blockSize);
  const stored = new Uint32Array(n);
  const codecs = new Uint8Array(n);
  const hashes = new Uint8Array(32 * n);
  const native = convertAddon();
  let total = 0;
  if (native) {
    total = native.compressBatch(buf, length, blockSize, stored, codecs, hashes);
    return { stored, codecs, hashes, total };
  }
  for (let i = 0; i < n; i++) {
    const start = i * blockSize;
    const block = buf.subarray(start, Math.min(start + blockSize, length));
    const r = compressBlock(block);
    // r.stored is either `block` itself (raw) or a new buffer; total <= start, so the copy only overwrites
    // bytes of this block or earlier ones, which were already consumed.
    if (r.stored === block) {
      if (total !== start) buf.copyWithin(total, start, start + block.length);
    } else r.stored.copy(buf, total);
    stored[i] = r.stored.length;
    codecs[i] = r.codec;
    hashes.set(r.sha256, 32 * i);
    total += r.stored.length;
  }
  return { stored, codecs, hashes, total };
}

const PROBE = 2048;

/**
 * LZ4 (lz4-napi) is slow on incompressible input (~50 MB/s vs ~1 GB/s on text), and layers hold many
 * already-compressed files. Two small samples (start and middle) decide: if neither shrinks at all,
 * the block is stored raw without trying the whole block. The decision depends only on the bytes,
 * so output stays deterministic.
 */
function looksIncompressible(data: Buffer): boolean {
  if (data.length < 8 * PROBE) return false;
  const mid = (data.length >>> 1) & ~7;
  // compressSync output has a 4-byte length prefix; compare payload to sample size
  return (
    compressSync(data.subarray(0, PROBE)).length - 4 >= PROBE &&
    compressSync(data.subarray(mid, mid + PROBE)).length - 4 >= PROBE
  );
}

/** Decodes stored block bytes whose hash was already checked. `what` names the block in errors. */
export function decodeStoredBlock(stored: Buffer, codec: Codec, length: number, what: string): Buffer {
  if (codec === Codec.Raw) {
    if (stored.length !== length)
      throw DfError.corrupt(`${what}: raw block is ${stored.length} bytes, expected ${length}`);
    return stored;
  }
  if (codec !== Codec.Lz4Block) throw DfError.corrupt(`${what}: unknown codec ${codec}`);
  if (stored.length < 5 || stored.readUInt32LE(0) !== length) {
    throw DfError.corrupt(`${what}: LZ4 length prefix does not match the block table (${length})`);
  }
  let out: Buffer;
  try {
    out = uncompressSync(stored);
  } catch (err) {
    throw DfError.corrupt(`${what}: LZ4 data is corrupt (${(err as Error).message})`, { cause: err });
  }
  if (out.length !== length) {
    throw DfError.corrupt(`${what}: decompressed to ${out.length} bytes, expected ${length}`);
  }
  return out;
}
