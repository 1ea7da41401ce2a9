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
