import { createHash } from 'node:crypto';
import { decodeFooter, FOOTER_SIZE, type Footer } from '../blob/footer.js';
import { DfbReader } from '../blob/reader.js';
import type { Toc } from '../blob/toc.js';
import type { BlobCache } from '../cache/blob-cache.js';
import { DfError } from '../errors.js';
import type { BlobRef, BlockSource } from '../fetch/types.js';
import { silentLogger, type Logger } from '../log.js';
import { bound, childSignal, realTimers, type Timers } from '../util/timers.js';

export interface LoadTocOptions {
  blob: BlobRef;
  /** The blob's cache, or its opening (owned by the caller, who releases it). */
  cache: BlobCache | Promise<BlobCache>;
  /**
   * The cache held nothing of the blob when its opening began (CacheManager.holds): the TOC cannot be in it,
   * so the sources are asked at once, while the cache opens.
   */
  cacheIsNew?: boolean;
  sources: BlockSource[];
  /** TOC digest from the layer annotation `dev.dfnode.dfb.toc.digest`; checked when given. */
  expectedTocDigest?: string;
  /**
   * TOC offset from the layer annotation `dev.dfnode.dfb.toc.offset`: TOC and footer then come in one range
   * read instead of two. Only a hint: the footer read with it decides, and a wrong hint costs a second read.
   */
  tocOffsetHint?: number;
  /** Time limit of each footer/TOC request (ms). Default 10 s. */
  requestTimeoutMs?: number;
  timers?: Timers;
  logger?: Logger;
  signal?: AbortSignal;
}

/** A verified TOC: the only way to get one is loadToc, which checks it against the footer and digest. */
export interface LoadedToc {
  toc: Toc;
  footer: Footer;
  /** Where the TOC came from. */
  source: 'cache' | 'remote';
  /** SHA-256 of the verified TOC unit (TOC + footer bytes): later copies of it are checked by hash alone. */
  unitSha256: Buffer;
  /**
   * The TOC was checked against the layer descriptor's TOC digest annotation: the trust chain (manifest →
   * descriptor → TOC → blocks, docs/format.md §4) then holds without the blob digest, and a blob whose every
   * unit was verified as it was stored needs no second pass over the whole file.
   */
  anchored: boolean;
  /** Verified TOC+footer bytes the cache could not take (NO_SPACE): the fill stores them later. */
  unstored?: Buffer;
}

const sha256 = (b: Buffer): Buffer => createHash('sha256').update(b).digest();

/** TOC + footer in one read from the offset hint only up to this size (a wrong hint reads no more). */
const MAX_HINTED_READ = 64 * 1024 * 1024;

/**
 * Gets footer + TOC of a DFB blob: from the cache when its TOC unit is present (no network), else with
 * two range reads from the sources (the footer, then the TOC; one read with a TOC offset hint), verified against the footer and the
 * expected TOC digest, and stored in the cache (whose layout it sets).
 */
export async function loadToc(opts: LoadTocOptions): Promise<LoadedToc> {
  const { blob } = opts;
  const logger = opts.logger ?? silentLogger;
  const timers = opts.timers ?? realTimers;
  const requestMs = opts.requestTimeoutMs ?? 10_000;
  if (blob.size < FOOTER_SIZE)
    throw DfError.corrupt(`blob ${blob.digest} is ${blob.size} bytes: not a DFB blob`);

  const anchored = opts.expectedTocDigest !== undefined;
  const early = opts.cacheIsNew ? fromSources(opts, requestMs, timers, logger) : undefined;
  early?.catch(() => undefined); // awaited below unless the cache fails to open first
  const cache = await opts.cache;
  if (!early) {
    const fromCache = await tocFromCache(cache, blob, opts.expectedTocDigest, logger, opts.signal);
    if (fromCache) return { ...fromCache, source: 'cache', anchored };
  }

  const { toc, footer, stored, tail } = await (early ?? fromSources(opts, requestMs, timers, logger));
  const unit = Buffer.concat([stored, tail]);
  const unitSha256 = sha256(unit);
  try {
    await cache.setLayout(toc.blockCount, footer.tocOffset, opts.signal);
    await cache.write(toc.blockCount, footer.tocOffset, unit, opts.signal);
  } catch (err) {
    if (cache.layout?.blockCount !== toc.blockCount) throw err;
    // e.g. NO_SPACE: the layer still mounts; the fill stores the TOC later
    logger.warn({ err, digest: blob.digest }, 'could not store the TOC in the cache');
    return { toc, footer, source: 'remote', unitSha256, unstored: unit, anchored };
  }
  return { toc, footer, source: 'remote', unitSha256, anchored };
}

async function tocFromCache(
  cache: BlobCache,
  blob: BlobRef,
  expected: string | undefined,
  logger: Logger,
  signal?: AbortSignal,
): Promise<{ toc: Toc; footer: Footer; unitSha256: Buffer } | undefined> {
  const layout = cache.layout;
  if (!layout || !cache.has(layout.blockCount)) return undefined;
  try {
    const unit = await cache.read(layout.tocOffset, blob.size - layout.tocOffset, signal);
    const footer = decodeFooter(unit.subarray(unit.length - FOOTER_SIZE), blob.size);
    const stored = unit.subarray(0, unit.length - FOOTER_SIZE);
    const toc = await DfbReader.decodeStoredTocAsync(footer, stored, expected);
    if (toc.blockCount !== layout.blockCount || footer.tocOffset !== layout.tocOffset) {
      throw DfError.corrupt('cached TOC does not match the cache layout');
    }
    return { toc, footer, unitSha256: sha256(unit) };
  } catch (err) {
    if (signal?.aborted) throw err;
    logger.warn({ err, digest: blob.digest }, 'cached TOC is unusable; fetching it again');
    cache.invalidate(layout.blockCount, blob.size - layout.tocOffset);
    return undefined;
  }
}

/**
 * Footer + TOC from the first source whose answer verifies. Without an expected TOC digest only the registry
 * is trusted (a peer or seed could hand out any TOC that matches its own footer); with one, a TOC that fails
 * the check (a forged or corrupt copy) moves on to the next source instead of failing the mount.
 */
async function fromSources(
  opts: LoadTocOptions,
  ms: number,
  timers: Timers,
  logger: Logger,
): Promise<{ toc: Toc; footer: Footer; stored: Buffer; tail: Buffer }> {
  const { blob, signal } = opts;
  const usable = opts.sources.filter((s) => opts.expectedTocDigest !== undefined || s.kind === 'registry');
  let lastErr: unknown = DfError.notFound(
    opts.sources.length > usable.length
      ? `no registry source for the TOC of blob ${blob.digest}, and the layer has no TOC digest annotation ` +
          '(needed to take a TOC from a peer or seed): check that the registry is reachable or convert the image again'
      : `no source for blob ${blob.digest}`,
  );
  const hint = opts.tocOffsetHint;
  const oneRead =
    hint !== undefined && hint >= 0 && hint <= blob.size - FOOTER_SIZE && blob.size - hint <= MAX_HINTED_READ;
  for (const s of usable) {
    try {
      let tail: Buffer;
      let stored: Buffer | undefined;
      if (oneRead) {
        const unit = await fromSource(s, blob, hint, blob.size - hint, ms, timers, signal);
        tail = unit.subarray(unit.length - FOOTER_SIZE);
        const at = decodeFooter(tail, blob.size).tocOffset;
        if (at >= hint) stored = unit.subarray(at - hint, unit.length - FOOTER_SIZE);
      } else tail = await fromSource(s, blob, blob.size - FOOTER_SIZE, FOOTER_SIZE, ms, timers, signal);
      const footer = decodeFooter(tail, blob.size);
      stored ??= await fromSource(s, blob, footer.tocOffset, footer.tocStoredLength, ms, timers, signal);
      // inflated on the thread pool: a large TOC does not stall the event loop (other layers' reads)
      const toc = await DfbReader.decodeStoredTocAsync(footer, stored, opts.expectedTocDigest);
      return { toc, footer, stored, tail };
    } catch (err) {
      if (signal?.aborted) throw DfError.from(err);
      logger.warn(
        { err, digest: blob.digest, source: s.name },
        'TOC from this source is unusable; trying the next',
      );
      lastErr = err;
    }
  }
  throw DfError.from(lastErr, `fetch TOC of ${blob.digest}`);
}

/** Exactly `length` bytes at `offset` from one source, bounded by `ms`. */
async function fromSource(
  s: BlockSource,
  blob: BlobRef,
  offset: number,
  length: number,
  ms: number,
  timers: Timers,
  signal?: AbortSignal,
): Promise<Buffer> {
  const what = `${s.name}: ${blob.digest} bytes ${offset}+${length}`;
  const rq = childSignal(signal, ms, timers, what);
  try {
    const data = await bound(s.fetch(blob, offset, length, rq.signal), { signal: rq.signal, what });
    if (data.length !== length) throw new DfError('NETWORK', `${what}: got ${data.length} bytes`);
    return data;
  } finally {
    rq.dispose();
  }
}
