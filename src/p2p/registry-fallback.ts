import type { BlobRef, BlockSource } from '../fetch/types.js';

/**
 * Why a node's range request went to the registry instead of the P2P tier (label of
 * dfnode_registry_fetches_total):
 * - seed_down: every seed of the blob refused the connection, errored or was isolated;
 * - seed_timeout: as seed_down, but the last seed tried did not answer within p2p.seedTimeoutMs (or, for
 *   a blocked read, the seed was slow);
 * - seed_busy: a blocked read whose seed answered busy (429: at its limit);
 * - verification: a block of the range from a peer or a seed failed verification and the retry went to
 *   the registry;
 * - retry: a registry request again after the registry itself failed (no P2P failure before it);
 * - seed_handed_back: a planned fill run the seed handed back because its own registry link was full; the
 *   tracker holds the units for this node, so the registry still sends them to the cluster once;
 * - seed_miss: on a seed, a block it did not hold yet (a seed's only reason).
 * A peer that times out or errors sends the range to the seed, not to the registry: peer timeouts show in
 * dfnode_peers_isolated_total{reason="timeout"}, and in this counter only if the seed tier fails as well.
 */
export type RegistryFetchReason =
  'seed_down' | 'seed_timeout' | 'seed_busy' | 'seed_handed_back' | 'verification' | 'retry' | 'seed_miss';

interface Note {
  offset: number;
  end: number;
  reason: RegistryFetchReason;
}

/** Per blob, only the last few notes (ranges in flight at once): bounded memory, no per-block state. */
const MAX_NOTES = 64;

/**
 * The P2P sources note why they could not serve a range (a few per blob, not per block); the registry
 * source takes the note that overlaps its range when it is asked, so that each registry fetch is
 * counted once with the reason the tier before it failed.
 */
export class RegistryFallback {
  private readonly notes = new Map<string, Note[]>();

  note(digest: string, offset: number, length: number, reason: RegistryFetchReason): void {
    let a = this.notes.get(digest);
    if (!a) this.notes.set(digest, (a = []));
    // a later, more specific reason for the same range replaces the earlier one
    const i = a.findIndex((n) => n.offset === offset && n.end === offset + length);
    if (i >= 0) a.splice(i, 1);
    a.push({ offset, end: offset + length, reason });
    if (a.length > MAX_NOTES) a.shift();
  }

  /** The reason of the newest note overlapping [offset, offset+length), removed; `retry` when there is none. */
  take(digest: string, offset: number, length: number): RegistryFetchReason {
    const a = this.notes.get(digest);
    if (!a) return 'retry';
    for (let i = a.length - 1; i >= 0; i--) {
      const n = a[i]!;
      if (n.offset < offset + length && offset < n.end) {
        a.splice(i, 1);
        if (!a.length) this.notes.delete(digest);
        return n.reason;
      }
    }
    return 'retry';
  }

  /** The range was served by the P2P tier: earlier notes about it are stale. */
  clear(digest: string, offset: number, length: number): void {
    const a = this.notes.get(digest);
    if (!a) return;
    for (let i = a.length - 1; i >= 0; i--)
      if (a[i]!.offset < offset + length && offset < a[i]!.end) a.splice(i, 1);
    if (!a.length) this.notes.delete(digest);
  }

  forget(digest: string): void {
    this.notes.delete(digest);
  }
}

/** The registry source of a node with a P2P tier: counts each request with its reason, then forwards it. */
export class CountedRegistrySource implements BlockSource {
  readonly kind: BlockSource['kind'];
  readonly name: string;

  constructor(
    private readonly inner: BlockSource,
    private readonly fallback: RegistryFallback,
    private readonly onFetch: (reason: RegistryFetchReason) => void,
  ) {
    this.kind = inner.kind;
    this.name = inner.name;
  }

  /** Counts the request with its reason, then passes every argument on (the fetch context included). */
  fetch(...args: Parameters<BlockSource['fetch']>): Promise<Buffer> {
    const [blob, offset, length] = args;
    this.onFetch(this.fallback.take(blob.digest, offset, length));
    return this.inner.fetch(...args);
  }

  badBlock(blob: BlobRef, data: Buffer, offset: number, length: number): void {
    this.inner.badBlock?.(blob, data, offset, length);
  }
}
