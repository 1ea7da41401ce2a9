import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DfbReader } from '../../src/blob/reader.js';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import type { Toc } from '../../src/blob/toc.js';
import { EntryType, type EntryMeta } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import { DfError } from '../../src/errors.js';
import type { FileReader } from '../../src/fetch/types.js';

/** FileReader straight over a local DFB file (what src/fetch does with a complete cache). */
export class DfbFileReader implements FileReader {
  reads = 0;
  /** When set, every read rejects with it (or hangs forever with 'hang'). */
  fail: DfError | 'hang' | undefined;
  constructor(readonly dfb: DfbReader) {}
  get toc(): Toc {
    return this.dfb.toc;
  }
  async read(ino: number, offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    this.reads++;
    if (this.fail === 'hang') return new Promise<Buffer>(() => {});
    if (this.fail) throw this.fail;
    return this.dfb.readFile(ino, offset, length, signal);
  }
  static async open(path: string): Promise<DfbFileReader> {
    return new DfbFileReader(await DfbReader.open(await FileRangeReader.open(path)));
  }
  async close(): Promise<void> {
    await this.dfb.close();
  }
}

export const base = { mode: 0o644, uid: 1000, gid: 1001, mtimeSec: 1_700_000_000, mtimeNsec: 123_456_789 };
export const dirBase = { ...base, mode: 0o755, type: EntryType.Dir };

async function* one(b: Buffer): AsyncGenerator<Buffer> {
  if (b.length) yield b;
}

export function bigContent(n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = 12345;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = (i >> 10) % 2 ? x >>> 24 : 97 + (i % 26);
  }
  return b;
}

export const BIG = bigContent(300_000);

export interface LayerSpec {
  files?: Array<{ path: string; content: Buffer | string; meta?: Partial<EntryMeta> }>;
  entries?: EntryMeta[];
  hardlinks?: Array<[string, string]>;
  opaque?: string[];
}

/** Writes a DFB layer; returns its path. */
export async function writeLayer(dir: string, name: string, spec: LayerSpec): Promise<string> {
  const out = join(dir, `${name}.dfb`);
  const w = new DfbWriter({ out, tmpDir: dir, workers: 1, blockSize: 16 * 1024 });
  for (const e of spec.entries ?? []) {
    if (e.type === EntryType.Dir) w.addEntry(e);
  }
  for (const f of spec.files ?? []) {
    const c = typeof f.content === 'string' ? Buffer.from(f.content) : f.content;
    await w.addFile({ ...base, ...f.meta, path: f.path, type: EntryType.File, size: c.length }, one(c));
  }
  for (const e of spec.entries ?? []) {
    if (e.type !== EntryType.Dir) w.addEntry(e);
  }
  for (const [p, t] of spec.hardlinks ?? []) w.addHardlink(p, t);
  for (const d of spec.opaque ?? []) w.markOpaque(d);
  await w.finish();
  return out;
}

/** A layer with every entry type, hard links, xattrs (incl. binary), a whiteout and an opaque directory. */
export const RICH: LayerSpec = {
  entries: [
    { ...dirBase, path: 'etc', xattrs: new Map([['user.dir', Buffer.from('d')]]) },
    { ...dirBase, path: 'var/cache', mode: 0o700 },
    { ...base, path: 'usr/bin/sh', type: EntryType.Symlink, mode: 0o777, linkTarget: '../../bin/busybox' },
    { ...base, path: 'dev/null', type: EntryType.CharDev, mode: 0o666, devMajor: 1, devMinor: 3 },
    { ...base, path: 'dev/sda1', type: EntryType.BlockDev, mode: 0o660, devMajor: 8, devMinor: 1 },
    { ...base, path: 'run/fifo', type: EntryType.Fifo, mode: 0o600 },
    { ...base, path: 'etc/removed', type: EntryType.Whiteout, mode: 0 },
  ],
  files: [
    { path: 'etc/hostname', content: 'dfnode\n' },
    { path: 'etc/empty', content: '' },
    {
      path: 'bin/busybox',
      content: BIG,
      meta: {
        mode: 0o4755,
        uid: 0,
        gid: 0,
        xattrs: new Map([
          [
            'security.capability',
            Buffer.from([1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
          ],
          ['user.empty', Buffer.alloc(0)],
          ['user.bin', Buffer.from([0, 255, 0, 128])],
        ]),
      },
    },
    { path: 'var/cache/keep', content: 'keep' },
  ],
  hardlinks: [
    ['bin/ls', 'bin/busybox'],
    ['usr/bin/cat', 'bin/busybox'],
  ],
  opaque: ['var/cache'],
};

export async function tempDir(
  prefix = 'dfnode-fuse-',
): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}
