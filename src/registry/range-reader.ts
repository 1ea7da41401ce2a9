import type { RangeReader } from '../blob/types.js';
import type { ImageReference } from './reference.js';

/** The two reads a range reader needs from a registry client (RegistryClient is one). */
export interface BlobRangeClient {
  getBlobRange(
    ref: ImageReference,
    digest: string,
    offset: number,
    length: number,
    opts: { signal?: AbortSignal },
  ): Promise<Buffer>;
  getBlobTail(
    ref: ImageReference,
    digest: string,
    length: number,
    opts: { signal?: AbortSignal },
  ): Promise<{ data: Buffer; size: number }>;
}

/** RangeReader over a registry blob: one HTTP range request per read, a suffix range for the tail. */
export class RegistryRangeReader implements RangeReader {
  private knownSize?: number;

  constructor(
    private readonly client: BlobRangeClient,
    readonly ref: ImageReference,
    readonly digest: string,
    size?: number,
  ) {
    this.knownSize = size;
  }

  get size(): number | undefined {
    return this.knownSize;
  }

  read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    return this.client.getBlobRange(this.ref, this.digest, offset, length, { signal });
  }

  async readTail(length: number, signal?: AbortSignal): Promise<{ data: Buffer; size: number }> {
    const tail = await this.client.getBlobTail(this.ref, this.digest, length, { signal });
    this.knownSize = tail.size;
    return tail;
  }
}
