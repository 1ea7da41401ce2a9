import type { Readable } from 'node:stream';
import type { PrefetchEntry } from '../src/blob/prefetch-list.js';
import { EntryType } from '../src/blob/types.js';
import { DfbWriter, type WriteResult } from '../src/blob/writer.js';
import { DfError } from '../src/errors.js';
import { readLayer } from './layer-input.js';
import type { Descriptor } from '../src/registry/oci.js';
import { classifyWhiteout, normalizeTarPath } from './paths.js';
import type { TarEntryType } from './tar-reader.js';

export interface ConvertLayerOptions {
  blockSize: number;
  workers: number;
  tmpDir: string;
  /** Access-ordered layout: see DfbWriterOptions.prefetch. */
  prefetch?: readonly PrefetchEntry[];
  signal?: AbortSignal;
  onBytesIn?: (n: number) => void;
}

export interface ConvertLayerResult {
  blob: WriteResult;
  diffId: string;
  compressedBytes: number;
  uncompressedBytes: number;
}

const TYPE_MAP: Record<Exclude<TarEntryType, 'file' | 'hardlink'>, EntryType> = {
  dir: EntryType.Dir,
  symlink: EntryType.Symlink,
  char: EntryType.CharDev,
  block: EntryType.BlockDev,
  fifo: EntryType.Fifo,
};

/** Converts one tar layer (gzip, zstd or plain) into a DFB blob at `outPath`, streaming, with bounded memory. */
export async function convertLayer(
  input: Readable,
  layer: Descriptor,
  outPath: string,
  opts: ConvertLayerOptions,
): Promise<ConvertLayerResult> {
  const writer = new DfbWriter({
    out: outPath,
    blockSize: opts.blockSize,
    workers: opts.workers,
    tmpDir: opts.tmpDir,
    prefetch: opts.prefetch,
    signal: opts.signal,
  });
  try {
    const res = await readLayer(
      input,
      layer,
      async ({ header: h, body }) => {
        const path = normalizeTarPath(h.name, h.offset);
        const meta = {
          path,
          mode: h.mode,
          uid: h.uid,
          gid: h.gid,
          mtimeSec: h.mtimeSec,
          mtimeNsec: h.mtimeNsec,
          xattrs: h.xattrs.size ? h.xattrs : undefined,
        };
        const wh = classifyWhiteout(path);
        if (wh.kind === 'opaque') return writer.markOpaque(wh.dir);
        if (wh.kind === 'meta') return;
        if (wh.kind === 'whiteout')
          return writer.addEntry({ ...meta, path: wh.path, type: EntryType.Whiteout });
        if (path === '' && h.type !== 'dir')
          throw DfError.corrupt(
            `layer ${layer.digest}: the root entry at byte ${h.offset} is not a directory`,
          );
        switch (h.type) {
          case 'file':
            return writer.addFile({ ...meta, type: EntryType.File, size: h.size }, body);
          case 'hardlink':
            return writer.addHardlink(path, normalizeTarPath(h.linkname, h.offset));
          case 'symlink':
            return writer.addEntry({ ...meta, type: EntryType.Symlink, linkTarget: h.linkname });
          default:
            return writer.addEntry({
              ...meta,
              type: TYPE_MAP[h.type],
              devMajor: h.devMajor,
              devMinor: h.devMinor,
            });
        }
      },
      { signal: opts.signal, onBytesIn: opts.onBytesIn },
    );
    const blob = await writer.finish();
    return { blob, ...res };
  } catch (err) {
    await writer.abort().catch(() => undefined);
    throw err;
  }
}
