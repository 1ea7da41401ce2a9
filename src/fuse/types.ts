import type { Toc } from '../blob/toc.js';
import type { Logger } from '../log.js';
import type { LayerFs } from './layer-fs.js';

/** Told synchronously when the units of a CachedBlocks change. */
export interface CachedBlocksListener {
  /** The unit's bytes were written to the data file (after verification) and it is now present. */
  present(unit: number): void;
  /** Units went away or the presence bitmap was replaced: read snapshot() again. */
  reset(): void;
}

/**
 * What direct reads need from a blob's local cache (the daemon's BlobCache satisfies it): the sparse data
 * file holding stored bytes at their blob offsets, and which units of it are present. Units are the blocks
 * 0..n-1, then the TOC unit n.
 */
export interface CachedBlocks {
  /** The sparse data file (only the bytes of present units are meaningful). */
  readonly dataPath: string;
  /** Blocks + 1 (the TOC unit); 0 while the layout is not known. */
  readonly unitCount: number;
  /** Every unit is present. */
  readonly isComplete: boolean;
  /** The units present now: bit i = byte i>>3, mask 1<<(i&7). A copy. */
  snapshot(): Uint8Array;
  /** Adds a listener of unit presence; returns its removal. */
  addUnitListener(l: CachedBlocksListener): () => void;
  /** Whether unit u is present now. */
  has(u: number): boolean;
  /** Records a use of the blob now (reads served without the cache's reader keep its GC order current). */
  touch(): void;
}

/**
 * A blob's TOC and its local cache: given to a mount, reads whose blocks are all in the cache are answered in
 * C on the FUSE reader threads (one pread, LZ4 decode, reply), without a hop to the JS thread. Blocks are
 * verified (SHA-256 against the TOC) before the cache takes them and the complete file against the blob
 * digest. With `verify` (the default; config `cache.verifyCachedReads`), C also checks each block against
 * its SHA-256 the first time the mount serves it (again after the unit changes): a block that rotted in the
 * cache file is passed to JS, which drops and refetches it. Unlike the JS path, which re-hashes a block on
 * every read from the cache file, C does not hash a block again once this mount has verified it.
 */
export interface DirectReadSource {
  toc: Toc;
  blocks: CachedBlocks;
  /** Check each block's SHA-256 the first time the mount serves it from C. Default true. */
  verify?: boolean;
  /** Units C must leave to JS for now (read-ahead tripwires, see fetch/read-ahead.ts). */
  gate?: DirectReadGate;
}

/** Present units the C path must not serve yet, and when it may (fetch/read-ahead.ts implements it). */
export interface DirectReadGate {
  isHeld(unit: number): boolean;
  /** Calls `fn` with each held unit when it is let go; returns the unsubscription. */
  onRelease(fn: (unit: number) => void): () => void;
}

export interface MountOptions {
  /** Value of the `fsname=` mount option (shows in /proc/mounts as the source). Default `dfnode`. */
  fsname?: string;
  /** Entry and attribute cache timeouts in seconds; layers are immutable so this is long. Default 86400. */
  cacheTimeoutSec?: number;
  /** Let other users (and containers with other uids) use the mount. Default true. */
  allowOther?: boolean;
  /**
   * Upper bound for a handler before the binding answers on its own (safety net above LayerFs's own read
   * timeout). Default 150000 ms.
   */
  handlerTimeoutMs?: number;
  /** Create the mountpoint when missing. Default false. */
  mkdir?: boolean;
  logger?: Logger;
  /**
   * Serve reads of blocks already in this cache without JS (the native binding; the others ignore it, and
   * so does the native binding with `directReads: false` or DFNODE_FUSE_DIRECT_READS=0). Without it every
   * read goes through the LayerFs.
   */
  direct?: DirectReadSource;
}

/** A mounted layer: the three-method seam (mount/check/unmount) after stargz-snapshotter. */
export interface FuseMount {
  readonly mountpoint: string;
  /** Unmounts (lazily if busy). Idempotent. */
  unmount(): Promise<void>;
  /** True while the mount answers (is mounted, served by this process, not ENOTCONN). */
  check(): Promise<boolean>;
}

export interface FuseBinding {
  mount(mountpoint: string, fs: LayerFs, opts?: MountOptions): Promise<FuseMount>;
}
