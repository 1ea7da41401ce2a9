import type { ServerResponse } from 'node:http';

/**
 * Sends `body` as the rest of an HTTP answer in pieces of `chunk` bytes every `everyMs` (a slow uplink),
 * then ends it; stops when the connection closes.
 */
export function trickle(res: ServerResponse, body: Buffer, chunk: number, everyMs: number): void {
  let at = 0;
  const t = setInterval(() => {
    const n = Math.min(chunk, body.length - at);
    res.write(body.subarray(at, at + n));
    at += n;
    if (at >= body.length) {
      clearInterval(t);
      res.end();
    }
  }, everyMs);
  res.on('close', () => clearInterval(t));
}
