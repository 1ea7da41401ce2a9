import { createRequire } from 'node:module';
import { nativeBuildPath } from '../util/native-path.js';
import { DfError } from '../errors.js';

const require = createRequire(import.meta.url);

/** What native/dfnode_fuse exports. Replies return false for an id answered already (stale). */
export interface NativeAddon {
  mount(mountpoint: string, options: string, dispatch: Dispatch, cfg: NativeMountConfig): Session;
  unmount(session: Session): void;
  info(session: Session): NativeInfo;
  replyErr(id: number, errno: number): boolean;
  replyAttr(id: number, attr: Float64Array): boolean;
  replyOpen(id: number): boolean;
  replyOpendir(id: number, names: Buffer, attrs: Float64Array, count: number): boolean;
  replyBuf(id: number, data: Uint8Array): boolean;
  replyStatfs(id: number, statfs: Float64Array): boolean;
  directMark(session: Session, unit: number, present: boolean): void;
  directComplete(session: Session, complete: boolean): void;
  directReset(session: Session, bits: Uint8Array): void;
  fuseVersion(): number;
}

/** One mount of the addon (an opaque external). */
export type Session = { readonly __session: unique symbol };

/**
 * Called on the JS thread for every request the reader threads forward: `op` is an operation code of
 * dfnode_fuse.h, `arg` the open flags (open) or the offset (read), `size` the read or xattr buffer size, `pid`
 * the requesting process (fuse_req_ctx; in this process's pid namespace, 0 when the kernel could not tell).
 */
export type Dispatch = (
  op: number,
  id: number,
  ino: number,
  arg: number | undefined,
  size: number,
  name?: string,
  pid?: number,
) => void;

export interface NativeMountConfig {
  threads: number;
  entryTimeout: number;
  attrTimeout: number;
  negativeTimeout: number;
  /** 1: file releases are sent to dispatch as notifications (op 10, id 0); they never leave C otherwise. */
  forwardRelease?: number;
  direct?: DirectTables;
}

/** What native/direct_read.c copies at mount to answer reads of cached blocks on the reader threads. */
export interface DirectTables {
  /** The cache data file (stored bytes at blob offsets). */
  path: string;
  /** Prefix sums over the blocks (n + 1 entries): stream offsets and blob offsets. */
  streamOffsets: Float64Array;
  blobOffsets: Float64Array;
  codecs: Uint8Array;
  /** By inode - 1: a regular file's offset in the stream and its size; size -1 for anything else. */
  fileOffsets: Float64Array;
  fileSizes: Float64Array;
  /** Units present now (blocks, then the TOC unit), and whether all are. */
  present: Uint8Array;
  complete: boolean;
  /**
   * SHA-256 of each block's stored bytes (32 bytes a block): when given, C checks a block against it the
   * first time the mount serves it (and after any change of that unit), and passes the read to JS if it
   * does not match. Without it C trusts the cache file.
   */
  digests?: Uint8Array;
}

/** Counters of one mount (kernel requests as the reader threads saw them). */
export interface NativeInfo {
  /** Served by this process: not unmounted and the kernel did not end the connection. */
  alive: boolean;
  reads: number;
  readBytes: number;
  /** Largest read request the kernel sent (bytes). */
  maxRead: number;
  requests: number;
  /** Reads answered in C from the cache file (direct reads), their bytes, and reads they passed to JS. */
  directReads: number;
  directBytes: number;
  directFallbacks: number;
  /** Blocks C checked against their SHA-256 before serving them, and blocks that did not match. */
  directVerified: number;
  directVerifyFailures: number;
  /**
   * Directory listings held in C for open directory handles: one per directory open at least once (shared
   * by its handles, freed with the last), the handles, and the bytes the listings take.
   */
  dirListings: number;
  dirHandles: number;
  dirBytes: number;
}

/** Path of the built addon (DFNODE_FUSE_ADDON overrides). */
export function nativeAddonPath(): string {
  return process.env.DFNODE_FUSE_ADDON ?? nativeBuildPath('dfnode_fuse.node');
}

let addon: NativeAddon | undefined;
let loadError: Error | undefined;

/** The addon, loaded once; throws UNSUPPORTED (every time) when it is not built or does not load. */
export function loadNativeAddon(): NativeAddon {
  if (addon) return addon;
  if (loadError) throw loadError;
  const path = nativeAddonPath();
  try {
    addon = require(path) as NativeAddon;
    return addon;
  } catch (err) {
    loadError = new DfError(
      'UNSUPPORTED',
      `the native FUSE addon could not be loaded from ${path} (${(err as Error).message}); build it with ` +
        '`npm run build:native` (needs libfuse3-dev, pkg-config and a C compiler)',
      { cause: err },
    );
    throw loadError;
  }
}
