import { open, type FileHandle } from 'node:fs/promises';
import { DfError } from '../errors.js';
import type { RangeReader } from './types.js';

/** RangeReader over a local file (an OCI layout blob, a cache file, a test fixture). */
export class FileRangeReader implements RangeReader {
  private constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    readonly path: string,
  ) {}

  static async open(path: string): Promise<FileRangeReader> {
    try {
      const fh = await open(path, 'r');
      const st = await fh.stat();
      return new FileRangeReader(fh, st.size, path);
    } catch (err) {
      throw DfError.from(err, `open ${path}`);
    }
  }

  async read(offset: number, length: number, signal?: AbortSignal): Promise<Buffer> {
    signal?.throwIfAborted();
    if (offset < 0 || length < 0 || offset + length > this.size) {
      throw DfError.corrupt(
        `read past the end of ${this.path}: ${offset}+${length} > ${this.size} (truncated blob or corrupt table)`,
      );
    }
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.fh.read(buf, done, length - done, offset + done);
      if (bytesRead === 0) throw DfError.corrupt(`unexpected end of ${this.path} at ${offset + done}`);
      done += bytesRead;
    }
    return buf;
  }

  async readTail(length: number, signal?: AbortSignal): Promise<{ data: Buffer; size: number }> {
    const n = Math.min(length, this.size);
    return { data: await this.read(this.size - n, n, signal), size: this.size };
  }

  async close(): Promise<void> {
    await this.fh.close();
  }
}
