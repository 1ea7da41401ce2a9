import type { RegistryClient } from '../registry/client.js';
import type { ImageReference } from '../registry/reference.js';
import type { BlobRef, BlockSource, FetchContext } from './types.js';

/**
 * The origin registry as a BlockSource: one HTTP range request per fetch. `ref` names the repository the
 * image came from (its tag/digest do not matter). The client should be built with few retries and a short
 * timeout: the unit fetcher retries across attempts and sources itself and bounds every read.
 */
export class RegistryBlockSource implements BlockSource {
  readonly kind = 'registry' as const;
  readonly name: string;

  constructor(
    private readonly client: RegistryClient,
    private readonly ref: ImageReference,
  ) {
    this.name = `registry ${ref.repoString}`;
  }

  fetch(
    blob: BlobRef,
    offset: number,
    length: number,
    signal: AbortSignal,
    ctx?: FetchContext,
  ): Promise<Buffer> {
    return this.client.getBlobRange(this.ref, blob.digest, offset, length, {
      signal,
      progress: ctx?.progress,
    });
  }
}
