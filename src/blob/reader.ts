import { hash } from 'node:crypto';
import { promisify } from 'node:util';
import { inflate, inflateSync } from 'node:zlib';
import { DfError } from '../errors.js';
import { decodeStoredBlock } from './block-codec.js';
import { decodeFooter, FOOTER_SIZE, type Footer } from './footer.js';
import { Toc } from './toc.js';
import { EntryType, TocCodec, type RangeReader } from './types.js';

export interface DfbReaderOpenOptions {
  /** sha256:hex of the stored TOC (layer annotation); checked in addition to the footer's own digest. */
  expectedTocDigest?: string;
  signal?: AbortSignal;
}

const inflateAsync = promisify(inflate);

/** Range reads issued by readFile/fileStream are capped at this many stored bytes. */
const MAX_RUN_BYTES = 8 * 1024 * 1024;

/**
 * Reads a DFB blob through a RangeReader: one suffix read for the footer, one read for the TOC,
 * then verified blocks on demand. Every block is checked against its SHA-256 before use.
 */
export class DfbReader {
  private constructor(
    readonly rr: RangeReader,
    readonly footer: Footer,
    readonly toc: Toc,
    /** Blob size. */
    readonly size: number,
  ) {}

  static async open(rr: RangeReader, opts: DfbReaderOpenOptions = {}): Promise<DfbReader> {
    const { data, size } = await rr.readTail(FOOTER_SIZE, opts.signal);
    if (data.length < FOOTER_SIZE) {
      throw DfError.corrupt(
        `DFB: blob is ${size} bytes, smaller than a footer (${FOOTER_SIZE}); truncated or not DFB`,
      );
    }
    const footer = decodeFooter(data, size);
    const stored = await rr.read(footer.tocOffset, footer.tocStoredLength, opts.signal);
    if (stored.length !== footer.tocStoredLength) throw DfError.corrupt('DFB: short TOC read');
    const toc = DfbReader.decodeStoredToc(footer, stored, opts.expectedTocDigest);
    return new DfbReader(rr, footer, toc, size);
  }

  /**
   * Verifies and decodes stored TOC bytes against a footer (for callers that cache the TOC elsewhere).
   * Checks the footer digest, the expected digest, the decompressed length and that the block table
   * ends where the TOC starts.
   */
  static decodeStoredToc(footer: Footer, stored: Buffer, expectedTocDigest?: string): Toc {
    DfbReader.checkStoredToc(footer, stored, expectedTocDigest);
    let raw: Buffer;
    if (footer.tocCodec === TocCodec.None) raw = stored;
    else {
      try {
        raw = inflateSync(stored, { maxOutputLength: Math.max(footer.tocLength, 1) });
      } catch (err) {
        throw DfError.corrupt(`DFB TOC: does not decompress (${(err as Error).message})`, { cause: err });
      }
    }
    return DfbReader.tocFromRaw(footer, raw);
  }

  /**
   * decodeStoredToc with the decompression on libuv's thread pool instead of the event loop (a TOC of 100k
   * entries inflates to ~9 MB: ~20 ms of inflate). Same checks and errors; Toc.decode itself stays synchronous.
   */
  static async decodeStoredTocAsync(
    footer: Footer,
    stored: Buffer,
    expectedTocDigest?: string,
  ): Promise<Toc> {
    DfbReader.checkStoredToc(footer, stored, expectedTocDigest);
    let raw: Buffer;
    if (footer.tocCodec === TocCodec.None) raw = stored;
    else {
      try {
        raw = await inflateAsync(stored, { maxOutputLength: Math.max(footer.tocLength, 1) });
      } catch (err) {
        throw DfError.corrupt(`DFB TOC: does not decompress (${(err as Error).message})`, { cause: err });
      }
    }
    return DfbReader.tocFromRaw(footer, raw);
  }

  /** The footer's and the expected digest of the stored TOC bytes. */
  private static checkStoredToc(footer: Footer, stored: Buffer, expectedTocDigest?: string): void {
    const actual = hash('sha256', stored, 'buffer');
    if (!actual.equals(footer.tocSha256)) {
      throw DfError.digestMismatch(
        'DFB TOC',
        'sha256:' + footer.tocSha256.toString('hex'),
        'sha256:' + actual.toString('hex'),
      );
    }
    const digest = 'sha256:' + actual.toString('hex');
    if (expectedTocDigest !== undefined && expectedTocDigest !== digest) {
      throw DfError.digestMismatch('DFB TOC (layer annotation)', expectedTocDigest, digest);
    }
  }

  /** Decodes the decompressed TOC and checks it against the footer. */
  private static tocFromRaw(footer: Footer, raw: Buffer): Toc {
    if (raw.length !== footer.tocLength) {
      throw DfError.corrupt(`DFB TOC: decompressed to ${raw.length} bytes, footer says ${footer.tocLength}`);
    }
    const toc = Toc.decode(raw);
    if (toc.storedDataLength !== footer.tocOffset) {
      throw DfError.corrupt(
        `DFB TOC: blocks end at ${toc.storedDataLength} but the TOC starts at ${footer.tocOffset}`,
      );
    }
    return toc;
  }

  /**
   * Verifies stored block bytes obtained from anywhere (cache, peer, registry) and decompresses them.
   * Throws DIGEST_MISMATCH or CORRUPT naming the block.
   */
  static verifyBlock(toc: Toc, i: number, stored: Buffer): Buffer {
    DfbReader.checkStoredBlock(toc, i, stored);
    return decodeStoredBlock(stored, toc.blockCodec(i), toc.blockLength(i), `DFB block ${i}`);
  }

  /** Verifies stored block bytes against the block table (length and SHA-256) without decompressing. */
  static checkStoredBlock(toc: Toc, i: number, stored: Buffer): void {
    if (!Number.isInteger(i) || i < 0 || i >= toc.blockCount) {
      throw DfError.invalidArgument(`DFB: no block ${i} (blob has ${toc.blockCount})`);
    }
    const want = toc.blockStoredLength(i);
    if (stored.length !== want) {
      throw DfError.corrupt(`DFB block ${i}: ${stored.length} stored bytes, block table says ${want}`, {
        details: { block: i },
      });
    }
    const actual = hash('sha256', stored, 'buffer'); // every block a node receives or serves
    const expected = toc.blockSha256(i);
    if (!actual.equals(expected)) {
      const e = DfError.digestMismatch(
        `DFB block ${i}`,
        'sha256:' + expected.toString('hex'),
        'sha256:' + actual.toString('hex'),
      );
      e.details.block = i;
      throw e;
    }
  }

  /** Verified stored bytes of block i. */
  async readStoredBlock(i: number, signal?: AbortSignal): Promise<Buffer> {
    const { offset, storedLength } = this.toc.block(i);
    const stored = await this.rr.read(offset, storedLength, signal);
    DfbReader.checkStoredBlock(this.toc, i, stored);
    return stored;
  }

  /** Verified, decompressed block i. */
  async readBlock(i: number, signal?: AbortSignal): Promise<Buffer> {
    const { offset, storedLength } = this.toc.block(i);
    return DfbReader.verifyBlock(this.toc, i, await this.rr.read(offset, storedLength, signal));
  }

  /** Verified, decompressed blocks first..last, fetched with one range read. */
  private async readBlockRun(first: number, last: number, signal?: AbortSignal): Promise<Buffer[]> {
    const start = this.toc.blockOffset(first);
    const run = await this.rr.read(start, this.toc.blockOffset(last + 1) - start, signal);
    const out: Buffer[] = [];
    for (let i = first; i <= last; i++) {
      const a = this.toc.blockOffset(i) - start;
      const b = this.toc.blockOffset(i + 1) - start;
      out.push(DfbReader.verifyBlock(this.toc, i, run.subarray(a, b)));
    }
    return out;
  }

  private fileExtent(ino: number): { dataOffset: number; size: number } {
    const st = this.toc.stat(ino);
    if (st.type !== EntryType.File) throw DfError.invalidArgument(`DFB: inode ${ino} is not a regular file`);
    return st;
  }

  /** Up to `length` bytes of a regular file from `offset` (fewer at the end of the file). */
  async readFile(ino: number, offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    const { dataOffset, size } = this.fileExtent(ino);
    if (!(offset >= 0) || !(length >= 0)) throw DfError.invalidArgument(`DFB: bad range ${offset}+${length}`);
    const n = Math.max(0, Math.min(length, size - offset));
    if (n === 0) return Buffer.alloc(0);
    const start = dataOffset + offset;
    const [first, last] = this.toc.blocksForRange(start, n);
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    let i = first;
    while (i <= last) {
      // one range read per run of blocks, capped so that a huge read does not buffer everything twice
      let j = i;
      while (j < last && this.toc.blockOffset(j + 2) - this.toc.blockOffset(i) <= MAX_RUN_BYTES) j++;
      const blocks = await this.readBlockRun(i, j, signal);
      for (let k = i; k <= j; k++) {
        const data = blocks[k - i]!;
        const bStart = this.toc.blockStreamOffset(k);
        const from = Math.max(start, bStart) - bStart;
        const to = Math.min(start + n, bStart + data.length) - bStart;
        filled += data.copy(out, filled, from, to);
      }
      i = j + 1;
    }
    if (filled !== n) throw DfError.internal(`DFB: readFile filled ${filled} of ${n} bytes`);
    return out;
  }

  /** The whole content of a regular file, in pieces of up to a few MiB. */
  async *fileStream(ino: number, signal?: AbortSignal): AsyncGenerator<Buffer> {
    const { size } = this.fileExtent(ino);
    const piece = MAX_RUN_BYTES / 2;
    for (let pos = 0; pos < size; pos += piece) {
      yield await this.readFile(ino, pos, Math.min(piece, size - pos), signal);
    }
  }

  async close(): Promise<void> {
    await this.rr.close?.();
  }
}
