import type { Readable } from 'node:stream';
import type { RangeReader } from '../src/blob/types.js';
import { DfError, isDfError } from '../src/errors.js';
import type { RegistryClient } from '../src/registry/client.js';
import type { ImageReference } from '../src/registry/reference.js';
import type { ImageStore, PushOptions, PushResult, RootManifest } from './store.js';

/** A repository on an OCI distribution registry. */
export class RegistryStore implements ImageStore {
  readonly description: string;
  readonly repository: string;
  readonly registryHost: string;

  constructor(
    private readonly client: RegistryClient,
    readonly ref: ImageReference,
  ) {
    this.description = ref.toString();
    this.repository = ref.repository;
    this.registryHost = ref.registry;
  }

  async resolveRoot(signal?: AbortSignal): Promise<RootManifest | undefined> {
    try {
      const m = await this.client.getManifest(this.ref, { signal });
      return { mediaType: m.mediaType, digest: m.digest, bytes: m.bytes };
    } catch (err) {
      if (isDfError(err, 'NOT_FOUND')) return undefined;
      throw err;
    }
  }

  async getManifest(digest: string, _mediaType: string, signal?: AbortSignal): Promise<Buffer> {
    const m = await this.client.getManifest(this.ref.withDigest(digest), { signal });
    if (m.digest !== digest)
      throw DfError.digestMismatch(`manifest from ${this.description}`, digest, m.digest);
    return m.bytes;
  }

  async openBlob(digest: string, _size: number, signal?: AbortSignal): Promise<Readable> {
    // The HTTP body itself, not the client's verifying pipe: callers verify the digest while reading (see
    // ImageStore), and destroying the body when a reader stops early (bad data) ends the request; destroying
    // a pipe in front of it left the connection busy, and closing the client then waited forever.
    const { stream } = await this.client.getBlob(this.ref, digest, { signal, verify: false });
    return stream;
  }

  async blobReader(digest: string, size: number): Promise<RangeReader> {
    return this.client.rangeReader(this.ref, digest, size);
  }

  async hasBlob(digest: string, signal?: AbortSignal): Promise<boolean> {
    return (await this.client.headBlob(this.ref, digest, { signal })) !== undefined;
  }

  async putBlob(
    digest: string,
    size: number,
    open: () => Readable,
    opts: PushOptions = {},
  ): Promise<PushResult> {
    return this.client.pushBlob(this.ref, digest, size, open, {
      mountFrom: opts.mountFrom,
      onProgress: opts.onProgress,
      signal: opts.signal,
    });
  }

  async putManifest(bytes: Buffer, mediaType: string, digest: string, signal?: AbortSignal): Promise<void> {
    await this.client.putManifest(this.ref.withDigest(digest), bytes, mediaType, { signal });
  }

  async tag(bytes: Buffer, mediaType: string, _digest: string, signal?: AbortSignal): Promise<void> {
    const tag = this.ref.tag;
    if (!tag) return; // a destination named by digest is complete once the manifest is stored
    await this.client.putManifest(this.ref.withTag(tag), bytes, mediaType, { signal });
  }

  async close(): Promise<void> {}
}
