// Helpers for tests of the converter's layer input (converter/layer-input.ts): a blob as a stream of chunks,
// the JavaScript input path (no native addon) for the length of a call, a layer read by a slow parser, and the
// addon's decoder fed piecewise.
import { Readable } from 'node:stream';
import { readLayer } from '../../converter/layer-input.js';
import type { ConvertAddon } from '../../src/blob/native-codec.js';
import { sha256 } from '../fixtures/tar-builder.js';
import { chunks } from './dfb.js';

/** `buf` as a stream of `chunk`-byte pieces (the last one shorter). */
export function chunkedStream(buf: Buffer, chunk = 1 << 20): Readable {
  return Readable.from(chunks(buf, chunk));
}

/**
 * Runs `fn` with DFNODE_CONVERT_ADDON=none when `off` (readLayer and worker threads started meanwhile take the
 * JavaScript path), restoring the variable afterwards.
 */
export async function withoutAddon<T>(off: boolean, fn: () => Promise<T>): Promise<T> {
  const old = process.env.DFNODE_CONVERT_ADDON;
  if (off) process.env.DFNODE_CONVERT_ADDON = 'none';
  try {
    return await fn();
  } finally {
    if (old === undefined) delete process.env.DFNODE_CONVERT_ADDON;
    else process.env.DFNODE_CONVERT_ADDON = old;
  }
}

/**
 * Reads `blob` (a layer of `mediaType`, in one chunk) with readLayer and a parser slower than the decoder,
 * which yields to the event loop after every body chunk: the tar bytes it saw and how many tar buffers
 * readLayer had out at once.
 */
export async function readSlowly(
  blob: Buffer,
  mediaType: string,
): Promise<{ seen: number; tarBuffers: number }> {
  let seen = 0;
  const r = await readLayer(
    chunkedStream(blob, blob.length),
    { mediaType, digest: sha256(blob), size: blob.length },
    async ({ body }) => {
      for await (const c of body) {
        seen += c.length;
        await new Promise((resolve) => setImmediate(resolve));
      }
    },
  );
  return { seen, tarBuffers: r.tarBuffers };
}

/** What decodeInPieces saw. */
export interface PiecewiseDecode {
  /** Everything decoded, in order. */
  out: Buffer;
  /** The decoder said the last member or frame ended, after the last piece. */
  finished: boolean;
  /** It said so before the last piece had gone in. */
  finishedEarly: boolean;
  /** A second call while one was running was refused every time ("has not finished"). */
  overlapRefused: boolean;
}

/**
 * Feeds `blob` to the addon's streaming decoder (decodeAsync) in pieces of `inStep` bytes with an output buffer
 * of `outSize`, then drains it with an empty input, as NativeInflater does.
 */
export async function decodeInPieces(
  native: ConvertAddon,
  kind: 'gzip' | 'zstd',
  blob: Buffer,
  inStep: number,
  outSize: number,
): Promise<PiecewiseDecode> {
  const h = native.decoder(kind);
  const out = Buffer.alloc(outSize);
  const parts: Buffer[] = [];
  const r = { finished: false, finishedEarly: false, overlapRefused: true };
  const drain = async (input: Buffer) => {
    let off = 0;
    for (;;) {
      const p = native.decodeAsync(h, input.subarray(off), out, 0);
      try {
        void native.decodeAsync(h, input, out, 0);
        r.overlapRefused = false;
      } catch (err) {
        if (!/has not finished/.test((err as Error).message)) r.overlapRefused = false;
      }
      const [inUsed, outUsed, fin] = await p;
      off += inUsed;
      r.finished = fin;
      parts.push(Buffer.from(out.subarray(0, outUsed)));
      if (outUsed === 0 && off >= input.length) return;
    }
  };
  for (let i = 0; i < blob.length; i += inStep) {
    await drain(blob.subarray(i, i + inStep));
    if (r.finished && i + inStep < blob.length) r.finishedEarly = true;
  }
  await drain(Buffer.alloc(0));
  return { out: Buffer.concat(parts), ...r };
}
