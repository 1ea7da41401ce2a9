import { open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { Bitmap } from './bitmap.js';

/** Where a blob's cache lives: `<dir>/data` (sparse, blob-sized), `<dir>/bitmap`, `<dir>/meta.json`. */
export const DATA_FILE = 'data';
export const BITMAP_FILE = 'bitmap';
export const META_FILE = 'meta.json';

/** Persisted per-blob facts, enough for status and gc without the TOC. */
export interface BlobMeta {
  version: 1;
  digest: string;
  size: number;
  /** Known once the TOC is: block count and TOC offset. Units = blockCount + 1 (TOC + footer). */
  blockCount?: number;
  tocOffset?: number;
  /** ms since epoch. */
  lastUsed: number;
  /** The complete file was hashed and matched the digest. */
  verified?: boolean;
}

/** Writes a blob's meta file (writeAtomic: durable unless `sync` is false). */
export function writeMeta(dir: string, meta: BlobMeta, sync = true): Promise<void> {
  return writeAtomic(dir, META_FILE, Buffer.from(JSON.stringify(meta)), sync);
}

/** Reads a blob's meta file; undefined when missing or not valid. */
export async function readMeta(dir: string): Promise<BlobMeta | undefined> {
  let text: string;
  try {
    text = await readFile(join(dir, META_FILE), 'utf8');
  } catch {
    return undefined;
  }
  try {
    const m = JSON.parse(text) as BlobMeta;
    const int = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
    if (m.version !== 1 || typeof m.digest !== 'string' || !int(m.size) || !int(m.lastUsed)) return undefined;
    if (
      (m.blockCount !== undefined && !int(m.blockCount)) ||
      (m.tocOffset !== undefined && !int(m.tocOffset))
    )
      return undefined;
    return m;
  } catch {
    return undefined;
  }
}

/** Reads a blob's persisted bitmap for status; undefined when missing or damaged. */
export async function readBitmap(
  dir: string,
  units: number,
): Promise<{ bitmap: Bitmap; filledBytes: number } | undefined> {
  try {
    return Bitmap.decode(await readFile(join(dir, BITMAP_FILE)), units);
  } catch {
    return undefined;
  }
}

/**
 * Writes name via name.tmp + fsync + rename + fsync(dir). Without `sync`, only tmp + rename: atomic (a reader
 * sees the old or the new file), but a crash may leave the old one.
 */
export async function writeAtomic(dir: string, name: string, data: Buffer, sync = true): Promise<void> {
  const tmp = join(dir, name + '.tmp');
  const fh = await open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(data);
    if (sync) await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, join(dir, name));
  if (!sync) return;
  const d = await open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
