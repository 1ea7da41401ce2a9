import { decodeFooter, FOOTER_SIZE, type Footer } from '../blob/footer.js';
import { DfbReader } from '../blob/reader.js';
import type { Toc } from '../blob/toc.js';
import type { BlobCache } from '../cache/blob-cache.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { BlobFetcher, type BlobFetcherInit } from './blob-fetcher.js';
import { bound, childSignal, realTimers, type Timers } from '../util/timers.js';
import type { BlobRef, BlockSource } from './types.js';

export interface OpenLayerOptions extends Omit<BlobFetcherInit, 'toc' | 'tocUnit'> {
  /** TOC digest from the layer annotation `dev.dfnode.dfb.toc.digest`; checked when given. */
  expectedTocDigest?: string;
  signal?: AbortSignal;
  /** Time limit of each footer/TOC request (ms). Default: options.requestTimeoutMs or 10 s. */
  requestTimeoutMs?: number;
}

export interface OpenedLayer {
  toc: Toc;
  footer: Footer;
  fetcher: BlobFetcher;
  /** Where the TOC came from. */
  tocSource: 'cache' | 'remote';
}

/**
 * Gets footer + TOC of a DFB blob: from the cache when its TOC unit is present (no network), else with
 * two range reads from the sources (the footer, then the TOC), verified against the footer and the
 * expected TOC digest and stored in the cache. Returns the TOC and a fetcher for the blob.
 */
export async function openLayer(opts: OpenLayerOptions): Promise<OpenedLayer> {
  const { blob, cache } = opts;
  const logger = opts.logger ?? silentLogger;
  const timers = opts.timers ?? realTimers;
  const reqMs = opts.requestTimeoutMs ?? opts.options?.requestTimeoutMs ?? 10_000;
  if (blob.size < FOOTER_SIZE)
    throw DfError.corrupt(`blob ${blob.digest} is ${blob.size} bytes: not a DFB blob`);

  const fromCache = await tocFromCache(cache, blob, opts.expectedTocDigest, logger, opts.signal);
  if (fromCache) {
    const fetcher = new BlobFetcher({ ...opts, toc: fromCache.toc });
    return { ...fromCache, fetcher, tocSource: 'cache' };
  }

  const read = (offset: number, length: number) =>
    fromSources(opts.sources, blob, offset, length, reqMs, timers, opts.signal);
  const tail = await read(blob.size - FOOTER_SIZE, FOOTER_SIZE);
  const footer = decodeFooter(tail, blob.size);
  const stored = await read(footer.tocOffset, footer.tocStoredLength);
  const toc = DfbReader.decodeStoredToc(footer, stored, opts.expectedTocDigest);
  const unit = Buffer.concat([stored, tail]);
  let tocUnit: Buffer | undefined;
  try {
    await cache.setLayout(toc.blockCount, footer.tocOffset, opts.signal);
    await cache.write(toc.blockCount, footer.tocOffset, unit, opts.signal);
  } catch (err) {
    if (cache.layout?.blockCount !== toc.blockCount) throw err;
    // e.g. NO_SPACE: the layer still mounts; the fill stores the TOC later
    logger.warn({ err, digest: blob.digest }, 'could not store the TOC in the cache');
    tocUnit = unit;
  }
  const fetcher = new BlobFetcher({ ...opts, toc, tocUnit });
  return { toc, footer, fetcher, tocSource: 'remote' };
}

async function tocFromCache(
  cache: BlobCache,
  blob: BlobRef,
  expected: string | undefined,
  logger: Logger,
  signal?: AbortSignal,
): Promise<{ toc: Toc; footer: Footer } | undefined> {
  const layout = cache.layout;
  if (!layout || !cache.has(layout.blockCount)) return undefined;
  try {
    const unit = await cache.read(layout.tocOffset, blob.size - layout.tocOffset, signal);
    const footer = decodeFooter(unit.subarray(unit.length - FOOTER_SIZE), blob.size);
    const toc = DfbReader.decodeStoredToc(footer, unit.subarray(0, unit.length - FOOTER_SIZE), expected);
    if (toc.blockCount !== layout.blockCount || footer.tocOffset !== layout.tocOffset) {
      throw DfError.corrupt('cached TOC does not match the cache layout');
    }
    return { toc, footer };
  } catch (err) {
    if (signal?.aborted) throw err;
    logger.warn({ err, digest: blob.digest }, 'cached TOC is unusable; fetching it again');
    cache.invalidate(layout.blockCount, blob.size - layout.tocOffset);
    return undefined;
  }
}

/** One range from the first source that answers with the right number of bytes. */
async function fromSources(
  sources: BlockSource[],
  blob: BlobRef,
  offset: number,
  length: number,
  ms: number,
  timers: Timers,
  signal?: AbortSignal,
): Promise<Buffer> {
  let lastErr: unknown = DfError.notFound(`no source for blob ${blob.digest}`);
  for (const s of sources) {
    const what = `${s.name}: ${blob.digest} bytes ${offset}+${length}`;
    const rq = childSignal(signal, ms, timers, what);
    try {
      const data = await bound(s.fetch(blob, offset, length, rq.signal), { signal: rq.signal, what });
      if (data.length === length) return data;
      lastErr = new DfError('NETWORK', `${what}: got ${data.length} bytes`);
    } catch (err) {
      if (signal?.aborted) throw DfError.from(err);
      lastErr = err;
    } finally {
      rq.dispose();
    }
  }
  throw DfError.from(lastErr, `fetch TOC of ${blob.digest}`);
}
