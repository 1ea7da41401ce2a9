// DfbReader.decodeStoredTocAsync (the TOC inflated on the thread pool) against the synchronous decodeStoredToc:
// same TOC for a good blob, same error codes for a stream that does not inflate, one that inflates past the
// footer's length, and a digest mismatch.
import { createHash } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import { beforeAll, describe, expect, it } from 'vitest';
import { decodeFooter, FOOTER_SIZE, type Footer } from '../../src/blob/footer.js';
import { DfbReader } from '../../src/blob/reader.js';
import { isDfError } from '../../src/errors.js';
import { smallRichBlob } from '../helpers/dfb.js';
import { parts } from './util.js';

let footer: Footer;
let stored: Buffer;

beforeAll(async () => {
  const blob = await smallRichBlob();
  footer = decodeFooter(blob.subarray(blob.length - FOOTER_SIZE), blob.length);
  stored = parts(blob).storedToc;
});

/** A footer for other stored TOC bytes (digest updated, so only the content is wrong). */
function restamp(bytes: Buffer): Footer {
  return { ...footer, tocStoredLength: bytes.length, tocSha256: createHash('sha256').update(bytes).digest() };
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  return p.then(
    () => undefined,
    (e: unknown) => (isDfError(e) ? e.code : `not a DfError: ${String(e)}`),
  );
}

function syncCode(fn: () => unknown): string | undefined {
  try {
    fn();
    return undefined;
  } catch (e) {
    return isDfError(e) ? e.code : `not a DfError: ${String(e)}`;
  }
}

describe('DfbReader.decodeStoredTocAsync', () => {
  it('decodes the same TOC as decodeStoredToc', async () => {
    const a = DfbReader.decodeStoredToc(footer, stored);
    const b = await DfbReader.decodeStoredTocAsync(footer, stored);
    expect(b.inodeCount).toBe(a.inodeCount);
    expect(b.blockCount).toBe(a.blockCount);
    for (let ino = 1; ino <= a.inodeCount; ino++) expect(b.stat(ino)).toEqual(a.stat(ino));
  });

  it('fails like decodeStoredToc: bad stream, too long, digest mismatch, expected digest', async () => {
    const garbage = Buffer.from('this is not a zlib stream at all');
    const long = deflateSync(Buffer.alloc(footer.tocLength + 4096, 1));
    const cases: Array<[Footer, Buffer, string?]> = [
      [restamp(garbage), garbage],
      [restamp(long), long],
      [footer, Buffer.concat([stored.subarray(0, -1), Buffer.from([stored.at(-1)! ^ 1])])],
      [footer, stored, 'sha256:' + '0'.repeat(64)],
    ];
    for (const [f, s, expected] of cases) {
      const want = syncCode(() => DfbReader.decodeStoredToc(f, s, expected));
      expect(want).toMatch(/^(CORRUPT|DIGEST_MISMATCH)$/);
      expect(await codeOf(DfbReader.decodeStoredTocAsync(f, s, expected))).toBe(want);
    }
  });
});
