import { createHash } from 'node:crypto';
import { decodeFooter, FOOTER_SIZE } from '../blob/footer.js';
import { DfbReader } from '../blob/reader.js';
import type { Toc } from '../blob/toc.js';
import { DfError } from '../errors.js';
import type { BlobRef } from './types.js';

/**
 * Verifies a unit's stored bytes from any source before they are used or cached: a block against the TOC's
 * block table; the TOC unit (TOC + footer, unit `toc.blockCount`) by its SHA-256 when the verified one's is
 * known (before anything is inflated: a forged TOC unit could claim any size), else decoded and compared with
 * the verified TOC. Throws DIGEST_MISMATCH or CORRUPT.
 */
export function checkStoredUnit(
  blob: BlobRef,
  toc: Toc,
  tocUnitSha256: Buffer | undefined,
  u: number,
  stored: Buffer,
): void {
  if (u < toc.blockCount) return DfbReader.checkStoredBlock(toc, u, stored);
  if (tocUnitSha256) {
    if (!createHash('sha256').update(stored).digest().equals(tocUnitSha256))
      throw DfError.corrupt(`DFB TOC unit of ${blob.digest} does not match the verified one`);
    return;
  }
  const footer = decodeFooter(stored.subarray(stored.length - FOOTER_SIZE), blob.size);
  const decoded = DfbReader.decodeStoredToc(footer, stored.subarray(0, stored.length - FOOTER_SIZE));
  if (!decoded.buffer.equals(toc.buffer)) throw DfError.corrupt(`DFB TOC of ${blob.digest} changed`);
}
