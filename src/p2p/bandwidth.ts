import { TokenBucket } from '../util/token-bucket.js';
import { realTimers, type Timers } from '../util/timers.js';
import type { BlobRef, BlockSource } from '../fetch/types.js';

/**
 * The host's upload and download rate limits (bytes/s, 0 = unlimited), one pair per process, shared by
 * peer, seed and registry traffic so that P2P never takes more of the host's link than configured.
 */
export class HostBandwidth {
  readonly upload: TokenBucket;
  readonly download: TokenBucket;

  constructor(uploadRate: number, downloadRate: number, timers: Timers = realTimers) {
    // a burst of 1/4 s (at least one 4 MiB run) keeps the limit tight without splitting requests
    const burst = (r: number) => Math.max(4 * 1024 * 1024, Math.ceil(r / 4));
    this.upload = new TokenBucket(uploadRate, burst(uploadRate), timers);
    this.download = new TokenBucket(downloadRate, burst(downloadRate), timers);
  }
}

/** A source whose bytes count against the host's download limit (the registry source). */
export class RateLimitedSource implements BlockSource {
  readonly kind;
  readonly name;

  constructor(
    private readonly inner: BlockSource,
    private readonly bucket: TokenBucket,
  ) {
    this.kind = inner.kind;
    this.name = inner.name;
  }

  /** Waits for the bytes' tokens, then passes every argument on (the fetch context included). */
  async fetch(...args: Parameters<BlockSource['fetch']>): Promise<Buffer> {
    const [, , length, signal] = args;
    await this.bucket.take(length, signal);
    return this.inner.fetch(...args);
  }

  badBlock(blob: BlobRef, data: Buffer, offset: number, length: number): void {
    this.inner.badBlock?.(blob, data, offset, length);
  }
}
