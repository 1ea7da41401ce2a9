import type { Dispatcher } from 'undici';
import type { RegistryClient } from '../registry/client.js';
import type { ImageReference } from '../registry/reference.js';
import type { RequestPipeline } from '../registry/request-pipeline.js';
import { bodyHold } from './body-hold.js';
import type { BlobRef, BlockSource, FetchContext } from './types.js';

/** The stall limit a fill run's hold is derived from (fillHoldMs: the fetcher's default request limit). */
const FILL_STALL_MS = 10_000;

/**
 * The origin registry as a BlockSource: one HTTP range request per fetch. `ref` names the repository the
 * image came from (its tag/digest do not matter). The client should be built with few retries and a short
 * timeout: the unit fetcher retries across attempts and sources itself and bounds every read. With a
 * `pipeline` (a seed), runs nobody is blocked on (FetchContext.bulk) are pipelined on its connection, back
 * to back; reads someone waits for never queue behind them.
 */
export class RegistryBlockSource implements BlockSource {
  readonly kind = 'registry' as const;
  readonly name: string;

  constructor(
    private readonly client: RegistryClient,
    private readonly ref: ImageReference,
    private readonly pipeline?: RequestPipeline,
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
    const get = (dispatcher?: Dispatcher) =>
      this.client.getBlobRange(this.ref, blob.digest, offset, length, {
        signal,
        progress: ctx?.progress,
        dispatcher,
        ...bodyHold(ctx, FILL_STALL_MS),
      });
    return this.pipeline && ctx?.bulk ? this.pipeline.lane(get) : get();
  }
}
