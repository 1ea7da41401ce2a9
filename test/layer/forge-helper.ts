import { readFile } from 'node:fs/promises';
import { pseudoRandom, writeDfb } from '../helpers/dfb.js';

/**
 * A valid DFB blob of exactly `size` bytes with other contents (one incompressible file, its length tuned
 * until the blob has the size): what a hostile peer or seed could hand out for someone else's digest.
 */
export async function forgedBlobOfSize(dir: string, size: number): Promise<Buffer> {
  let len = Math.max(1, size - 4096);
  for (let i = 0; i < 12; i++) {
    const w = await writeDfb(dir, `forged${i}`, {
      files: [{ path: 'evil', content: pseudoRandom(len, 4242, false) }],
    });
    if (w.size === size) return readFile(w.path);
    len = Math.max(1, len + (size - w.size));
  }
  throw new Error(`could not forge a blob of ${size} bytes`);
}
