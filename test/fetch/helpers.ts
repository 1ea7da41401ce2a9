import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DfbReader } from '../../src/blob/reader.js';
import { FileRangeReader } from '../../src/blob/file-range-reader.js';
import type { Toc } from '../../src/blob/toc.js';
import { EntryType } from '../../src/blob/types.js';
import { DfbWriter } from '../../src/blob/writer.js';
import { DfError } from '../../src/errors.js';
import type { Timers } from '../../src/util/timers.js';
import type { BlobRef, BlockSource, SourceKind } from '../../src/fetch/types.js';
import { base, chunks, dirMeta, pseudoRandom } from '../blob/util.js';

export async function tempDir(
  prefix = 'dfnode-fetch-',
): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  return { dir, cleanup: () => rm(dir, { recursive: true, force: true }) };
}

export interface TestBlob {
  bytes: Buffer;
  blob: BlobRef;
  toc: Toc;
  tocDigest: string;
  files: Map<string, Buffer>;
  ino(path: string): number;
}

/** A DFB blob with 16 KiB blocks: a few small files and two large ones (~40 blocks total). */
export async function makeBlob(dir: string, name = 'b.dfb'): Promise<TestBlob> {
  const out = join(dir, name);
  const w = new DfbWriter({ out, tmpDir: dir, workers: 1, blockSize: 16 * 1024 });
  const files = new Map<string, Buffer>();
  w.addEntry(dirMeta('etc'));
  for (let i = 0; i < 6; i++) {
    const c = pseudoRandom(500 + i * 4000, i + 1, i % 2 === 0);
    files.set(`etc/f${i}`, c);
    await w.addFile({ ...base, path: `etc/f${i}`, type: EntryType.File, size: c.length }, chunks(c));
  }
  for (const [p, n, seed] of [
    ['usr/big1', 300_000, 7],
    ['usr/big2', 250_000, 9],
  ] as const) {
    const c = pseudoRandom(n, seed, seed === 7);
    files.set(p, c);
    await w.addFile({ ...base, path: p, type: EntryType.File, size: c.length }, chunks(c));
  }
  const res = await w.finish();
  const bytes = await readFile(out);
  const rr = await FileRangeReader.open(out);
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

export function sha256(b: Buffer): string {
  return 'sha256:' + createHash('sha256').update(b).digest('hex');
}

export interface Req {
  offset: number;
  length: number;
}

/** A BlockSource over a buffer that records requests and can inject faults. */
export class FakeSource implements BlockSource {
  readonly name: string;
  requests: Req[] = [];
  bytes = 0;
  /** Corrupt the bytes at these blob offsets in the next N responses that contain them. */
  corruptAt: Array<{ offset: number; times: number }> = [];
  /** Fail the next N requests with this error. */
  failNext = 0;
  failWith: () => Error = () => new DfError('NETWORK', 'injected failure');
  /** Never answer (and ignore the abort signal). */
  hang = false;
  /** When set, each request waits for this gate before answering. */
  gate: Promise<void> | undefined;
  log: string[] = [];

  constructor(
    readonly data: Buffer,
    readonly kind: SourceKind = 'registry',
  ) {
    this.name = `fake ${kind}`;
  }

  async fetch(_blob: BlobRef, offset: number, length: number, _signal: AbortSignal): Promise<Buffer> {
    this.requests.push({ offset, length });
    this.log.push(`${offset}+${length}`);
    if (this.hang) return new Promise<Buffer>(() => {});
    if (this.gate) await this.gate;
    if (this.failNext > 0) {
      this.failNext--;
      throw this.failWith();
    }
    const out = Buffer.from(this.data.subarray(offset, offset + length));
    for (const c of this.corruptAt) {
      if (c.times > 0 && c.offset >= offset && c.offset < offset + length) {
        c.times--;
        out[c.offset - offset] ^= 0xff;
      }
    }
    this.bytes += out.length;
    return out;
  }

  reset(): void {
    this.requests = [];
    this.bytes = 0;
    this.log = [];
  }
}

/** A promise with its resolve function exposed. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/** A clock and timers the test moves by hand: `pending` holds the timers set and not yet fired. */
export function manualClock(start = 0): {
  timers: Timers;
  pending: Array<{ at: number; fn: () => void }>;
  now: number;
} {
  const clock = {
    now: start,
    pending: [] as Array<{ at: number; fn: () => void }>,
    timers: undefined as unknown as Timers,
  };
  clock.timers = {
    now: () => clock.now,
    setTimeout: (fn, ms) => {
      const t = { at: clock.now + ms, fn };
      clock.pending.push(t);
      return t;
    },
    clearTimeout: (h) => {
      const i = clock.pending.indexOf(h as (typeof clock.pending)[number]);
      if (i >= 0) clock.pending.splice(i, 1);
    },
  };
  return clock;
}
