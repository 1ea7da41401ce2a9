// Test DFB blobs: one writer that turns a spec into a blob file, deterministic contents, and the blobs
// that several test folders share (a small one with every entry type, a ~40-block one for fetching).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import type { PrefetchEntry } from '../../src/blob/prefetch-list.js';
import { DfbReader } from '../../src/blob/reader.js';
import type { Toc } from '../../src/blob/toc.js';
import { EntryType, type EntryMeta, type WriteResult } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import type { BlobRef } from '../../src/fetch/types.js';
import { tempDir } from './temp.js';

/** Owner, mode and times of the entries a spec does not describe otherwise. */
export type EntryBase = Omit<EntryMeta, 'path' | 'type'>;

export const base: EntryBase = {
  mode: 0o644,
  uid: 0,
  gid: 0,
  mtimeSec: 1_700_000_000,
  mtimeNsec: 0,
};

export const dirMeta = (path: string, extra: Partial<EntryMeta> = {}): EntryMeta => ({
  ...base,
  mode: 0o755,
  path,
  type: EntryType.Dir,
  ...extra,
});

/** A buffer as a stream of odd-sized chunks, as a tar reader would hand a file to the writer. */
export async function* chunks(buf: Buffer, size = 7919): AsyncGenerator<Buffer> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size);
}

/** Deterministic pseudo-random bytes (xorshift32): with `compressible`, every other 4 KiB is text-like. */
export function pseudoRandom(n: number, seed: number, compressible = true): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = compressible && (i >> 12) % 2 === 0 ? 97 + (x % 6) : x & 0xff;
  }
  return b;
}

export interface DfbSpec {
  files?: Array<{ path: string; content: Buffer | string; meta?: Partial<EntryMeta> }>;
  /** Directories are added before the files, every other type after them. */
  entries?: EntryMeta[];
  /** [path, target] pairs. */
  hardlinks?: Array<[string, string]>;
  opaque?: string[];
  /** Metadata of the files (under each file's own `meta`). Default `base`. */
  defaults?: EntryBase;
  /** Default 16 KiB. */
  blockSize?: number;
  /** Access-ordered layout (DfbWriterOptions.prefetch). */
  prefetch?: PrefetchEntry[];
  /** Compression workers. Default 1. */
  workers?: number;
}

/** Writes `<dir>/<name>.dfb` from a spec. */
export async function writeDfb(
  dir: string,
  name: string,
  spec: DfbSpec,
): Promise<WriteResult & { path: string }> {
  const path = join(dir, `${name}.dfb`);
  const w = new DfbWriter({
    out: path,
    tmpDir: dir,
    workers: spec.workers ?? 1,
    blockSize: spec.blockSize ?? 16 * 1024,
    prefetch: spec.prefetch,
  });
  for (const e of spec.entries ?? []) {
    if (e.type === EntryType.Dir) w.addEntry(e);
  }
  for (const f of spec.files ?? []) {
    const c = typeof f.content === 'string' ? Buffer.from(f.content) : f.content;
    const meta = {
      ...(spec.defaults ?? base),
      ...f.meta,
      path: f.path,
      type: EntryType.File,
      size: c.length,
    };
    await w.addFile(meta, chunks(c));
  }
  for (const e of spec.entries ?? []) {
    if (e.type !== EntryType.Dir) w.addEntry(e);
  }
  for (const [p, t] of spec.hardlinks ?? []) w.addHardlink(p, t);
  for (const d of spec.opaque ?? []) w.markOpaque(d);
  return { ...(await w.finish()), path };
}

/** A small blob (16 KiB blocks, ~25 blocks) holding every entry type, for corruption and fuzz tests. */
export async function smallRichBlob(prefetch?: PrefetchEntry[]): Promise<Buffer> {
  const files: NonNullable<DfbSpec['files']> = [];
  for (let i = 0; i < 12; i++)
    files.push({ path: `etc/f${i}`, content: pseudoRandom(1000 + i * 3000, i + 1, i % 2 === 0) });
  files.push({ path: 'usr/lib/big', content: pseudoRandom(200_000, 77) }, { path: 'usr/empty', content: '' });
  const { dir, cleanup } = await tempDir('dfnode-dfb-');
  try {
    const { path } = await writeDfb(dir, 'rich', {
      files,
      entries: [
        dirMeta('etc'),
        { ...base, path: 'usr/bin/sh', type: EntryType.Symlink, linkTarget: 'busybox' },
        { ...base, path: 'dev/null', type: EntryType.CharDev, devMajor: 1, devMinor: 3 },
        { ...base, path: 'dev/sda', type: EntryType.BlockDev, devMajor: 8, devMinor: 1 },
        { ...base, path: 'run/p', type: EntryType.Fifo },
        { ...base, path: 'var/gone', type: EntryType.Whiteout },
        dirMeta('var/cache/x', {
          xattrs: new Map([
            ['user.a', Buffer.from([1, 2, 3])],
            ['user.b', Buffer.alloc(0)],
          ]),
        }),
      ],
      hardlinks: [['usr/lib/big2', 'usr/lib/big']],
      opaque: ['var/cache'],
      prefetch,
    });
    return await readFile(path);
  } finally {
    await cleanup();
  }
}

export interface TestBlob {
  bytes: Buffer;
  blob: BlobRef;
  toc: Toc;
  tocDigest: string;
  files: Map<string, Buffer>;
  ino(path: string): number;
}

/** A DFB blob with 16 KiB blocks: a few small files and two large ones (~40 blocks in all), opened. */
export async function makeBlob(dir: string, name = 'b', prefetch?: PrefetchEntry[]): Promise<TestBlob> {
  const files = new Map<string, Buffer>();
  for (let i = 0; i < 6; i++) files.set(`etc/f${i}`, pseudoRandom(500 + i * 4000, i + 1, i % 2 === 0));
  files.set('usr/big1', pseudoRandom(300_000, 7, true));
  files.set('usr/big2', pseudoRandom(250_000, 9, false));
  const res = await writeDfb(dir, name, {
    entries: [dirMeta('etc')],
    files: [...files].map(([path, content]) => ({ path, content })),
    prefetch,
  });
  const bytes = await readFile(res.path);
  const rr = await FileRangeReader.open(res.path);
  const reader = await DfbReader.open(rr);
  await rr.close();
  const toc = reader.toc;
  return {
    bytes,
    blob: { digest: res.digest, size: res.size },
    toc,
    tocDigest: res.tocDigest,
    files,
    ino: (p) => {
      const i = toc.lookup(p);
      if (i === undefined) throw new Error(`no ${p}`);
      return i;
    },
  };
}
