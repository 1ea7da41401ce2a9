import { DfError } from '../errors.js';
/** A response body as undici and node streams give it. */
export type Body = AsyncIterable<Uint8Array> & { destroy(err?: Error): unknown };

/**
 * Copies `body` into `out` as it arrives (one copy, no chunk list, no concat) and returns how many bytes
 * came. `progress` hears of every chunk (`out` and how much of it is filled), so that a caller can use the
 * front of the buffer before the rest arrives. A body longer than `out` is cut off as soon as the first byte
 * too many arrives and rejected with `tooLong(bytes so far)`; on any error the body is destroyed.
 */
export async function readInto(
  body: Body,
  out: Buffer,
  tooLong: (atLeast: number) => Error,
  progress?: (data: Buffer, filled: number) => void,
): Promise<number> {
  let got = 0;
  try {
    for await (const chunk of body) {
      if (got + chunk.length > out.length) throw tooLong(got + chunk.length);
      out.set(chunk, got);
      got += chunk.length;
      progress?.(out, got);
    }
  } catch (err) {
    body.destroy();
    throw err;
  }
  return got;
}

/** Exactly `length` bytes of a body into a new buffer: a longer body is cut off, a shorter one is an error. */
export async function readExactly(
  body: Body,
  length: number,
  what: string,
  progress?: (data: Buffer, filled: number) => void,
): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  const got = await readInto(
    body,
    out,
    (atLeast) =>
      new DfError(
        'NETWORK',
        `${what}: the host sent more than the ${length} bytes asked for (at least ${atLeast}); response cut off`,
      ),
    progress,
  );
  if (got !== length) throw new DfError('NETWORK', `${what}: got ${got} of ${length} bytes`);
  return out;
}
