import { DfbReader } from '../../src/blob/reader.js';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import type { Toc } from '../../src/blob/toc.js';
import { EntryType } from '../../src/blob/types.js';
import { DfError } from '../../src/errors.js';
import type { FileReader } from '../../src/fetch/types.js';
import type { DfbSpec } from '../helpers/dfb.js';

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

/** Owner, mode and times of the fuse tests' files: not root, with nanoseconds, to see them pass through. */
export const base = { mode: 0o644, uid: 1000, gid: 1001, mtimeSec: 1_700_000_000, mtimeNsec: 123_456_789 };
const dirBase = { ...base, mode: 0o755, type: EntryType.Dir };

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

/** A layer with every entry type, hard links, xattrs (incl. binary), a whiteout and an opaque directory. */
export const RICH: DfbSpec = {
  defaults: base,
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
