import type { Dispatcher } from 'undici';
import { DfError } from '../errors.js';
import { readInto } from '../util/read-into.js';

/** Reads a body fully, up to `limit` bytes. */
export async function readBody(
  body: AsyncIterable<unknown> & { destroy(): unknown },
  limit: number,
  what: string,
): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += (c as Buffer).length;
    if (n > limit) {
      body.destroy();
      throw new DfError('REGISTRY', `${what} is larger than ${limit} bytes`);
    }
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks, n);
}

/** Told as a body arrives: `data` is the whole destination buffer, its first `filled` bytes are in. */
export type BodyProgress = (data: Buffer, filled: number) => void;

/**
 * A body of at most `length` bytes, copied once into one buffer as it arrives (readInto): `progress` hears
 * of every chunk, so that a caller can use the front of the buffer before the rest comes (a seed forwards
 * verified blocks as they arrive). A longer body is an error; a shorter one is returned short (the caller
 * checks the length).
 */
export async function readBodyInto(
  body: Dispatcher.ResponseData['body'],
  length: number,
  what: string,
  progress?: BodyProgress,
): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  const n = await readInto(
    body,
    out,
    () => new DfError('REGISTRY', `${what} is larger than ${length} bytes`),
    progress,
  );
  return n === length ? out : out.subarray(0, n);
}

export function parseContentRange(
  v: string | undefined,
): { start: number; end: number; size?: number } | undefined {
  if (!v) return undefined;
  const m = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(v);
  if (!m) return undefined;
  const start = Number(m[1]);
  const end = Number(m[2]);
  if (end < start) return undefined;
  return { start, end, size: m[3] === '*' ? undefined : Number(m[3]) };
}

/** From a full-body answer: bytes [offset, offset+length), then the connection is dropped. */
export async function sliceStream(
  body: Dispatcher.ResponseData['body'],
  offset: number,
  length: number,
  what: string,
): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let pos = 0;
  let got = 0;
  try {
    for await (const c of body) {
      const chunk = c as Buffer;
      const from = Math.max(0, offset - pos);
      pos += chunk.length;
      if (from >= chunk.length) continue;
      const n = Math.min(chunk.length - from, length - got);
      chunk.copy(out, got, from, from + n);
      got += n;
      if (got === length) break;
    }
  } finally {
    body.destroy();
  }
  if (got !== length)
    throw DfError.corrupt(`range ${offset}+${length} is past the end of ${what} (size ${pos})`);
  return out;
}

/** From a full-body answer: its last `length` bytes and its size. */
export async function tailOfStream(
  body: Dispatcher.ResponseData['body'],
  length: number,
): Promise<{ data: Buffer; size: number }> {
  let kept: Buffer[] = [];
  let keptBytes = 0;
  let size = 0;
  for await (const c of body) {
    const chunk = c as Buffer;
    size += chunk.length;
    kept.push(chunk);
    keptBytes += chunk.length;
    while (kept.length > 1 && keptBytes - kept[0]!.length >= length) keptBytes -= kept.shift()!.length;
  }
  const all = Buffer.concat(kept, keptBytes);
  kept = [];
  const n = Math.min(length, all.length);
  return { data: all.subarray(all.length - n), size };
}
