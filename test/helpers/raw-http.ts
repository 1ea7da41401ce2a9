import { connect } from 'node:net';

/**
 * Sends `bytes` as they are on a new TCP connection to 127.0.0.1:`port` (no client library to tidy them
 * up), half-closes when `end`, and resolves with what came back once the server closes the connection or
 * `waitMs` passed (then the connection is dropped).
 */
export function rawExchange(
  port: number,
  bytes: string | Buffer,
  opts: { end?: boolean; waitMs?: number } = {},
): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect(port, '127.0.0.1');
    const done = () => {
      clearTimeout(t);
      s.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    };
    const t = setTimeout(done, opts.waitMs ?? 5000);
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('error', done);
    s.on('close', done);
    s.write(bytes, () => {
      if (opts.end !== false) s.end();
    });
  });
}

/** The status code of a raw HTTP response, or 0 when none came. */
export function statusOf(response: string): number {
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(response);
  return m ? Number(m[1]) : 0;
}
