import type { SourceKind } from './types.js';

const KINDS: SourceKind[] = ['cache', 'memory', 'peer', 'seed', 'registry'];
const zero = (): Record<SourceKind, number> => ({ cache: 0, memory: 0, peer: 0, seed: 0, registry: 0 });

/** Optional hooks for a metrics backend (the daemon maps them to Prometheus); called off the data path. */
export interface FetchMetricsSink {
  /** One remote range request finished (ok or not). */
  fetchLatency?(kind: SourceKind, seconds: number, ok: boolean): void;
  /** A read waited this long for remote fetches. */
  blockedRead?(seconds: number): void;
}

/**
 * Plain counters of the fetch layer; one instance may be shared by every fetcher of a node.
 * The daemon reads them (or passes a sink) to publish Prometheus metrics.
 */
export class FetchStats {
  /** Stored bytes served per source (memory: decompressed bytes). */
  readonly bytes = zero();
  /** Blocks served per source. */
  readonly blocks = zero();
  /** Remote range requests per source, and failed ones. */
  readonly requests = zero();
  readonly errors = zero();
  /** Blocks that failed verification (from a source, or from the local cache), and by source. */
  verifyFailures = 0;
  readonly verifyFailuresBy = zero();
  /** Blocks fetched again after a failure. */
  refetches = 0;
  /** Reads that waited for a remote fetch, and the total time they waited (ms). */
  blockedReads = 0;
  blockedMs = 0;
  /** Reads that failed with TIMEOUT / any error. */
  readTimeouts = 0;
  readErrors = 0;
  /** Bytes moved by background fill. */
  fillBytes = 0;
  /** Bytes moved by mount-time prefetch of the TOC's prefetch ranges. */
  prefetchBytes = 0;
  /** Blobs whose complete cache file matched / did not match the digest. */
  completeVerified = 0;
  completeMismatches = 0;
  /** Blobs complete with every unit verified against an annotation-anchored TOC (no whole-file pass). */
  completeByBlocks = 0;
  /** Recent fetch latencies in ms (ring buffer) for callers without a sink. */
  readonly latencyMs: Float64Array;
  private latencyPos = 0;
  latencyCount = 0;

  constructor(
    readonly sink: FetchMetricsSink = {},
    samples = 1024,
  ) {
    this.latencyMs = new Float64Array(samples);
  }

  recordFetch(kind: SourceKind, ms: number, ok: boolean): void {
    this.requests[kind]++;
    if (!ok) this.errors[kind]++;
    this.latencyMs[this.latencyPos] = ms;
    this.latencyPos = (this.latencyPos + 1) % this.latencyMs.length;
    this.latencyCount++;
    this.sink.fetchLatency?.(kind, ms / 1000, ok);
  }

  recordBlocked(ms: number): void {
    this.blockedReads++;
    this.blockedMs += ms;
    this.sink.blockedRead?.(ms / 1000);
  }

  recordVerifyFailure(kind: SourceKind): void {
    this.verifyFailures++;
    this.verifyFailuresBy[kind]++;
  }

  served(kind: SourceKind, blocks: number, bytes: number): void {
    this.blocks[kind] += blocks;
    this.bytes[kind] += bytes;
  }

  /** A JSON-friendly copy (for `dfnode status`). */
  toJSON(): Record<string, unknown> {
    const { latencyMs: _l, sink: _s, ...rest } = this as unknown as Record<string, unknown>;
    void _l;
    void _s;
    return { ...rest, kinds: KINDS };
  }
}
