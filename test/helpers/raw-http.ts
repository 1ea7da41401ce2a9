import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';

/**
 * Sends `bytes` as they are on a new TCP connection to 127.0.0.1:`port` (from `localAddress`, e.g. another
 * 127.0.0.x standing for another host; no client library to tidy them up), half-closes when `end`, and resolves with what came back once the server closes the connection or
 * `waitMs` passed (then the connection is dropped).
 */
export function rawExchange(
  port: number,
  bytes: string | Buffer,
  opts: { end?: boolean; waitMs?: number; localAddress?: string } = {},
): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const s = connect({ port, host: '127.0.0.1', localAddress: opts.localAddress });
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

/** An HTTP answer read whole, and whether it ended cleanly (false: the server cut the connection). */
export interface HttpAnswer {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  complete: boolean;
}

/** One request to `host:port`; a cut connection resolves with complete = false instead of throwing. */
export function httpAnswer(
  address: string,
  path: string,
  headers: Record<string, string> = {},
  method = 'GET',
): Promise<HttpAnswer> {
  const i = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    const r = httpRequest(
      { host: address.slice(0, i), port: Number(address.slice(i + 1)), path, headers, method },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', () => undefined);
        res.on('close', () =>
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
            complete: res.complete,
          }),
        );
      },
    );
    r.on('error', reject);
    r.end();
  });
}
