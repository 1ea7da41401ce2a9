import { createRequire } from 'node:module';
import { nativeBuildPath } from '../util/native-path.js';

const require = createRequire(import.meta.url);

/**
 * The converter's native addon (native/dfnode_convert.c, built by `npm run build:native` with liblz4 and
 * ISA-L). When it does not load, the writer falls back to lz4-napi and node:zlib: slower, and the LZ4
 * bytes differ (another encoder), but the blob is as valid and still deterministic on that machine.
 * DFNODE_CONVERT_ADDON names another build; DFNODE_CONVERT_ADDON=none forces the fallback.
 */
export interface ConvertAddon {
  /**
   * LZ4 blocks of buf[0, length) compacted in place (see dfnode_convert.c); returns the stored bytes.
   * `hashes` (32 bytes per block) gets each block's SHA-256 of its stored bytes.
   */
  compressBatch(
    buf: Uint8Array,
    length: number,
    blockSize: number,
    stored: Uint32Array,
    codecs: Uint8Array,
    hashes?: Uint8Array,
  ): number;
  /** A pool of `threads` compression threads of its own (see convert_pool.c). */
  compressPool(threads: number): unknown;
  /** compressBatch on the pool's threads; nothing passed may change until the promise settles. */
  poolCompress(
    pool: unknown,
    buf: Uint8Array,
    length: number,
    blockSize: number,
    stored: Uint32Array,
    codecs: Uint8Array,
    hashes: Uint8Array,
  ): Promise<number>;
  /** Lets the queued batches finish and joins the pool's threads. */
  closePool(pool: unknown): void;
  /** A streaming decoder's state (gzip: ISA-L; zstd: libzstd), for decodeAsync(). */
  decoder(kind: 'gzip' | 'zstd'): unknown;
  /**
   * Decodes input into out[outOff...] until either runs out, on libuv's thread pool; resolves to the input
   * bytes used, the output bytes written and whether the last gzip member or zstd frame ended; rejects (code
   * Z_DATA_ERROR or ZSTD_DATA_ERROR) on corrupt data. Calls on a handle must not overlap, and the buffers must
   * not change meanwhile.
   */
  decodeAsync(
    handle: unknown,
    input: Uint8Array,
    out: Uint8Array,
    outOff: number,
  ): Promise<[number, number, boolean]>;
  /** dst[dstOff, dstOff + src.length) = src, by memcpy (V8 copies into SharedArrayBuffers several times slower). */
  copyInto(dst: Uint8Array, dstOff: number, src: Uint8Array): void;
  /** state[0] = CRC-64 (ISA-L crc64_ecma_refl) of buf, continuing from state[0]. */
  crc64(state: BigUint64Array, buf: Uint8Array): void;
  /** A SHA-256 whose updates run on libuv's thread pool (see dfnode_convert.c). */
  sha256(): unknown;
  /** Hashes `bufs` in order, off this thread; updates must not overlap and the buffers must not change meanwhile. */
  sha256Update(handle: unknown, bufs: Uint8Array[]): Promise<void>;
  /** The digest (32 bytes); resets the state. */
  sha256Digest(handle: unknown): Buffer;
}

let addon: ConvertAddon | null | undefined;
let loadError: string | undefined;

/** native/build/Release/dfnode_convert.node (DFNODE_CONVERT_ADDON overrides; `none`: no addon). */
function addonPath(): string | undefined {
  const env = process.env.DFNODE_CONVERT_ADDON;
  if (env) return env === 'none' ? undefined : env;
  return nativeBuildPath('dfnode_convert.node');
}

/** The addon, or null when it is not built or does not load (convertAddonError() says why). */
export function convertAddon(): ConvertAddon | null {
  if (process.env.DFNODE_CONVERT_ADDON === 'none') {
    // asked for each time (not cached): tests switch between the paths in one process
    loadError = 'disabled by DFNODE_CONVERT_ADDON=none; conversion uses the slower JavaScript path';
    return null;
  }
  if (addon !== undefined) return addon;
  const path = addonPath();
  try {
    if (!path) throw new Error('disabled by DFNODE_CONVERT_ADDON=none, or native/ not found');
    addon = require(path) as ConvertAddon;
  } catch (err) {
    addon = null;
    loadError =
      `the converter's native addon did not load from ${path ?? '(none)'} (${(err as Error).message}); ` +
      'conversion uses the slower JavaScript path. Build it with `npm run build:native` ' +
      '(needs liblz4-dev, libisal-dev and a C compiler)';
  }
  return addon;
}

/** Why convertAddon() is null, or undefined when it loaded. */
export function convertAddonError(): string | undefined {
  return convertAddon() ? undefined : loadError;
}
