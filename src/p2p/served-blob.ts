// What the block server serves (the provider's side of the peer data plane): a blob's ranges, with what a
// request may tell about it; implemented by nodes (their caches), seeds and a seed's raw files.

import type { Units } from './unit-layout.js';

/** What a request may tell the server about a blob it does not hold yet (a seed fetches it from there). */
export interface BlobHint {
  /** `registry/repository` the blob can be fetched from (never credentials). */
  repo?: string;
  size?: number;
  /** The requesting node's P2P id (header x-dfnode-peer-id), when it sent one. */
  peer?: string;
  /** The node may be told to take the range elsewhere (HTTP 409, see ServedBlob.read). */
  defer?: boolean;
  /**
   * The node can fetch a planned run from the registry itself: a seed whose registry link is full may hand
   * the run back (HTTP 409 with HANDED_BACK_HEADER) and set `handedBack`, so that the units stay claimed for
   * the node at the tracker when the answer is sent (not released as undelivered).
   */
  origin?: boolean;
  handedBack?: boolean;
  /**
   * Set by the block server: a read that waits for bytes still on their way (a seed's fetch of a file) calls
   * it when they progress, so that the request's idle limit (requestTimeoutMs) does not cut a slow wait.
   */
  alive?: () => void;
}

/**
 * A served range: its bytes, or the parts that make them up, in order, each settling when it is verified
 * (a seed forwarding blocks as they arrive from the registry). Parts after the first are sent as they
 * come; one that fails then cuts the response short (the client sees a short body and tries elsewhere).
 */
export type ServedBytes = Buffer | readonly Promise<Buffer>[];

/** A blob this host serves. */
export interface ServedBlob {
  readonly size: number;
  /**
   * Verified stored bytes [offset, offset+length), or undefined when this host does not hold every unit
   * under the range (a node; a seed fetches what it misses).
   */
  read(
    offset: number,
    length: number,
    signal: AbortSignal,
    hint?: BlobHint,
  ): Promise<ServedBytes | undefined>;
  /**
   * Optional: the SHA-256 (hex) of the range when it is exactly one piece of a raw file the seed is still
   * fetching (sent as PIECE_DIGEST_HEADER after the read: the node checks the piece against it, with the
   * trust it gives the seed's piece table).
   */
  pieceDigest?(offset: number, length: number): string | undefined;
  /** Optional: a range read for `peer` did not reach it (an error answer, or the peer left mid-response). */
  undelivered?(offset: number, length: number, peer: string): void;
  /** Optional: a range read for `peer` reached it whole. */
  delivered?(offset: number, length: number, peer: string): void;
  /**
   * Optional (a raw file the seed is still fetching): settles once a read of the range would not wait for
   * bytes still on their way from the origin (rejects as that read would). The request waits for it before
   * it takes an upload slot or response memory: a request waiting for the origin is sending nothing, so
   * it does not keep requests for pieces that are here (another file's) from being sent.
   */
  ready?(offset: number, length: number, signal: AbortSignal, hint?: BlobHint): Promise<void>;
  /**
   * Optional (a seed's raw files): planned requests (`defer=1`) for such blobs served at once, over all of
   * them; more are answered 429 with Retry-After. A seed's uplink shared by every node's pieces in flight
   * sends each piece late, later than other nodes wait for it before they ask the seed for another copy;
   * a few at a time, each piece is soon at a node and spreads from there.
   */
  readonly uploadSlots?: number;
}

export interface BlobProvider {
  /** The blob, or undefined when this host does not serve it. */
  get(digest: string, hint: BlobHint, signal: AbortSignal): Promise<ServedBlob | undefined>;
}

/**
 * Raw files a seed holds (`dfnode get`: src/mirror/seed-files.ts, given by the command that starts the
 * seed): piece tables by URL, pieces by content digest.
 */
export interface SeedFileProvider {
  init(): Promise<void>;
  /**
   * The piece table asked for by `GET /files/table?...` (block-server.ts), with the headers the node gives
   * for the origin (its credentials, origin-headers.ts).
   */
  table(query: URLSearchParams, signal: AbortSignal, origin?: Record<string, string>): Promise<Buffer>;
  /** The file held (or being fetched) under `digest` and its pieces; undefined when not a file of this seed. */
  served(digest: string): (ServedBlob & { readonly layout: Units }) | undefined;
  /** The pieces of `digest` the seed can send now (its tracker's seed bitmap); undefined: not a file here. */
  bits?(digest: string): Uint8Array | undefined;
  releaseIdle(idleMs: number): Promise<void>;
  close(): Promise<void>;
}
