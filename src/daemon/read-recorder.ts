import { randomBytes } from 'node:crypto';
import { rename, rm, writeFile } from 'node:fs/promises';
import { formatPrefetchList, type PrefetchEntry } from '../blob/prefetch-list.js';
import type { Toc } from '../blob/toc.js';
import { DfError } from '../errors.js';
import type { FileReader } from '../fetch/types.js';

export interface ReadRecorderOptions {
  /** Files recorded at most; reads of further files are not recorded (counted in `droppedFiles`). Default 100000. */
  maxFiles?: number;
  /** Ranges kept per file; past it the file is recorded as read whole (no ranges). Default 256. */
  maxRangesPerFile?: number;
}

interface FileRecord {
  /** [start, end) in first-access order, disjoint and not adjacent; undefined: the whole file. */
  ranges: Array<[number, number]> | undefined;
}

/**
 * `dfnode run --record-reads`: which files the containers read, and which byte ranges of them, in
 * first-access order across every layer this daemon serves. A file is named by its path in the layer, which
 * is its path in the container's root filesystem. Each layer's reader is wrapped (wrap()); the direct-read C
 * path must be off for the mounts it records (see NodeRuntime), or reads of cached blocks would not be seen.
 *
 * Memory is bounded: at most maxFiles files (later files are dropped and counted) and maxRangesPerFile ranges
 * per file (past that the file counts as read whole). Adjacent and overlapping ranges are merged.
 */
export class ReadRecorder {
  private readonly files = new Map<string, FileRecord>();
  private readonly paths = new WeakMap<Toc, Map<number, string>>();
  private readonly maxFiles: number;
  private readonly maxRanges: number;
  /** Reads of files not recorded because maxFiles was reached. */
  droppedFiles = 0;

  constructor(opts: ReadRecorderOptions = {}) {
    this.maxFiles = Math.max(1, opts.maxFiles ?? 100_000);
    this.maxRanges = Math.max(1, opts.maxRangesPerFile ?? 256);
  }

  get fileCount(): number {
    return this.files.size;
  }

  /** A reader that records the reads of `inner` (one layer whose TOC is `toc`) before serving them. */
  wrap(toc: Toc, inner: FileReader): FileReader {
    return {
      toc,
      read: (ino, offset, length, signal, ctx) => {
        this.recordRead(toc, ino, offset, length);
        return inner.read(ino, offset, length, signal, ctx);
      },
      release: inner.release?.bind(inner),
    };
  }

  private recordRead(toc: Toc, ino: number, offset: number, length: number): void {
    let size: number;
    try {
      size = toc.stat(ino).size;
    } catch {
      return; // a bad inode: the reader answers the error
    }
    const n = Math.min(length, size - offset);
    if (!(offset >= 0) || !(n > 0)) return;
    const path = this.pathOf(toc, ino);
    if (path !== undefined) this.record(path, offset, n);
  }

  /** The first path of an inode in the layer (hard links: any one), from a map built on first use. */
  private pathOf(toc: Toc, ino: number): string | undefined {
    let m = this.paths.get(toc);
    if (!m) {
      m = new Map();
      for (const { path, ino: i } of toc.walk()) if (!m.has(i)) m.set(i, '/' + path);
      this.paths.set(toc, m);
    }
    return m.get(ino);
  }

  /** Records a read of [offset, offset+length) of the file at `path`. */
  record(path: string, offset: number, length: number): void {
    let f = this.files.get(path);
    if (!f) {
      if (this.files.size >= this.maxFiles) {
        this.droppedFiles++;
        return;
      }
      f = { ranges: [] };
      this.files.set(path, f);
    }
    const rs = f.ranges;
    if (!rs) return;
    let start = offset;
    let end = offset + length;
    // merge with every range it touches; the merged range keeps the place of the first one
    let at = -1;
    for (let i = 0; i < rs.length; i++) {
      const r = rs[i]!;
      if (r[0] > end || r[1] < start) continue;
      start = Math.min(start, r[0]);
      end = Math.max(end, r[1]);
      if (at < 0) at = i;
      else rs.splice(i--, 1);
    }
    if (at >= 0) rs[at] = [start, end];
    else if (rs.length >= this.maxRanges) f.ranges = undefined;
    else rs.push([start, end]);
  }

  /** The prefetch list so far, in first-access order. */
  entries(): PrefetchEntry[] {
    const out: PrefetchEntry[] = [];
    for (const [path, f] of this.files)
      out.push(f.ranges ? { path, ranges: f.ranges.map(([s, e]) => [s, e - s]) } : { path });
    return out;
  }

  /** Writes the prefetch list to `file` atomically (a temporary file beside it, then rename). */
  async writeTo(file: string): Promise<void> {
    const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
    let text = formatPrefetchList(this.entries());
    if (this.droppedFiles)
      text = `# dfnode: ${this.droppedFiles} reads of further files not recorded (at ${this.maxFiles} files)\n${text}`;
    try {
      await writeFile(tmp, text, { mode: 0o644 });
      await rename(tmp, file);
    } catch (err) {
      await rm(tmp, { force: true });
      throw DfError.from(err, `write the read recording to ${file}`);
    }
  }
}
