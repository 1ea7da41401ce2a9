import type { Readable } from 'node:stream';
import type { RangeReader } from '../src/blob/types.js';

export interface PushOptions {
  /** Repositories on the same registry that may already hold the blob (cross-repository mount). */
  mountFrom?: string[];
  onProgress?: (bytes: number) => void;
  signal?: AbortSignal;
}

import type { PushResult } from '../src/registry/blob-upload.js';

export type { PushResult };

export interface RootManifest {
  mediaType: string;
  digest: string;
  bytes: Buffer;
}

/**
 * Where images are read from and written to: a registry repository, an OCI layout directory or a
 * docker archive (read only). The converter only talks to this interface.
 */
export interface ImageStore {
  readonly description: string;
  /** Repository path when the store is a registry (used for cross-repository mounts). */
  readonly repository?: string;
  /** Registry host when the store is a registry. */
  readonly registryHost?: string;
  /** The manifest or index this location names (tag or digest); undefined when it does not exist. */
  resolveRoot(signal?: AbortSignal): Promise<RootManifest | undefined>;
  /** A manifest or index by digest, verified against the digest. */
  getManifest(digest: string, mediaType: string, signal?: AbortSignal): Promise<Buffer>;
  /** A blob's bytes as a stream; callers verify the digest while reading. */
  openBlob(digest: string, size: number, signal?: AbortSignal): Promise<Readable>;
  /** Random access to a blob (for verification of DFB layers). */
  blobReader(digest: string, size: number): Promise<RangeReader>;
  hasBlob(digest: string, signal?: AbortSignal): Promise<boolean>;
  putBlob(digest: string, size: number, open: () => Readable, opts?: PushOptions): Promise<PushResult>;
  /**
   * Optional fast path for a blob the caller wrote itself to a local file and whose digest it computed while
   * writing (a trusted digest): the store may take the file over (rename) instead of copying and re-hashing
   * it. The file may be gone afterwards.
   */
  adoptBlobFile?(digest: string, size: number, file: string, opts?: PushOptions): Promise<PushResult>;
  /** Stores a manifest or index under its digest (not yet visible under the tag). */
  putManifest(bytes: Buffer, mediaType: string, digest: string, signal?: AbortSignal): Promise<void>;
  /** Points the location's tag at a manifest or index stored before: the step that makes an image visible. */
  tag(bytes: Buffer, mediaType: string, digest: string, signal?: AbortSignal): Promise<void>;
  close(): Promise<void>;
}
