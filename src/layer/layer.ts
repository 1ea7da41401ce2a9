import type { Footer } from '../blob/footer.js';
import type { Toc } from '../blob/toc.js';
import type { BlobCache } from '../cache/blob-cache.js';
import { DfError } from '../errors.js';
import type { UnitFetcher } from '../fetch/unit-fetcher.js';
import type { BlobRef, FileReader } from '../fetch/types.js';
import type { LayerCore } from './layer-core.js';

/**
 * One holder's reference to an open DFB layer (stargz's `Layer` with `Done()`): from LayerStore.open, given
 * back with release(). Every holder of the same blob shares one LayerCore — cache handle, verified TOC,
 * reader, background fill and P2P membership — which closes when the last handle is released.
 */
export class Layer {
  private done: Promise<void> | undefined;

  /** @internal LayerStore makes handles. */
  constructor(
    private readonly core: LayerCore,
    private readonly onRelease: () => Promise<void>,
  ) {}

  get blob(): BlobRef {
    return this.core.blob;
  }

  get digest(): string {
    return this.core.blob.digest;
  }

  get toc(): Toc {
    return this.core.toc;
  }

  get footer(): Footer {
    return this.core.footer;
  }

  /** Where the TOC came from when the layer opened. */
  get tocSource(): 'cache' | 'remote' {
    return this.core.tocSource;
  }

  /** File contents for the filesystem (memory → cache → fetch, verified). */
  get reader(): FileReader {
    this.live();
    return this.core.reader;
  }

  /** Verified units for seeds and the P2P planner. */
  get fetcher(): UnitFetcher {
    this.live();
    return this.core.fetcher;
  }

  /** The blob's cache (read-only use: presence, fill ratio, direct reads of cached blocks). */
  get cache(): BlobCache {
    return this.core.cache;
  }

  /** What the P2P fill planner did for this blob (absent without a P2P tier). */
  get fillCounters(): Readonly<Record<string, number>> | undefined {
    return this.core.fillCounters;
  }

  get released(): boolean {
    return this.done !== undefined;
  }

  /** Starts filling every missing unit in the background (idempotent). */
  startFill(): void {
    this.live();
    this.core.fill.start();
  }

  get filling(): boolean {
    return this.core.fill.started;
  }

  /** Resolves when the whole blob is cached and its digest checked; rejects on a mismatch or close. */
  whenComplete(): Promise<void> {
    return this.core.fill.whenComplete();
  }

  /** Gives this reference back (idempotent); the last one closes the layer. */
  release(): Promise<void> {
    this.done ??= this.onRelease();
    return this.done;
  }

  private live(): void {
    if (this.done) throw new DfError('FAILED_PRECONDITION', `layer ${this.digest}: used after release`);
  }
}
