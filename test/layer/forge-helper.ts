import { readFile } from 'node:fs/promises';
import { pseudoRandom, writeDfb } from '../helpers/dfb.js';

/**
 * A valid DFB blob of exactly `size` bytes with other contents (one incompressible file, its length tuned
 * until the blob has the size): what a hostile peer or seed could hand out for someone else's digest.
 * The TOC is compressed, so its size moves a little with the file's length and contents: a few coarse
 * steps, then a search of nearby lengths and other contents.
 */
export async function forgedBlobOfSize(dir: string, size: number): Promise<Buffer> {
  let n = 0;
  const attempt = async (len: number, seed = 4242) => {
    const w = await writeDfb(dir, `forged${n++}`, {
      files: [{ path: 'evil', content: pseudoRandom(len, seed, false) }],
    });
    return { size: w.size, path: w.path };
  };
  let len = Math.max(1, size - 4096);
  for (let i = 0; i < 8; i++) {
    const w = await attempt(len);
    if (w.size === size) return readFile(w.path);
    len = Math.max(1, len + (size - w.size));
  }
  // other contents compress to TOCs of other sizes: some length near this one with some seed fits
  for (let d = 0; d <= 16; d++)
    for (const l of [len - d, len + d])
      for (let seed = 1; seed <= 16 && l >= 1; seed++) {
        const w = await attempt(l, seed);
        if (w.size === size) return readFile(w.path);
      }
  throw new Error(`could not forge a blob of ${size} bytes`);
}
