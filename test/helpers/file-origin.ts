import { join } from 'node:path';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

/** A plain HTTP origin of raw files for `dfnode get` tests: counts every byte it serves. */
export interface FileOrigin {
  /** http://127.0.0.1:PORT */
  base: string;
  /** Body bytes sent so far (GET, whole or ranges), and requests by kind. */
  served(): number;
  requests: { get: number; range: number; head: number; refused: number };
  /** Serves `data` at `path` (ETag from `version`). */
  put(path: string, data: Buffer, version?: string): void;
  close(): Promise<void>;
}

/**
 * Starts an origin on loopback: GET (whole or one `Range: bytes=a-b` / `bytes=a-`), HEAD, ETag and
 * Content-Length; with `auth`, every request must carry `Authorization: auth` (one of them, when a list;
 * else 401). Bodies are sent
 * in 64 KiB writes with back-pressure, so that a client killed mid-transfer stops the count.
 */
export async function startFileOrigin(
  opts: {
    auth?: string | string[];
    /** Pause after each 64 KiB of a body (a slow origin). */ chunkDelayMs?: number;
  } = {},
): Promise<FileOrigin> {
  const files = new Map<string, { data: Buffer; etag: string }>();
  let served = 0;
  const requests = { get: 0, range: 0, head: 0, refused: 0 };
  const server: Server = createServer((req, res) => {
    void (async () => {
      const auth = opts.auth === undefined ? undefined : [opts.auth].flat();
      if (auth && !auth.includes(req.headers.authorization ?? '')) {
        requests.refused++;
        res.writeHead(401, { 'www-authenticate': 'Bearer' }).end('unauthorized');
        return;
      }
      const f = files.get((req.url ?? '').split('?')[0]!);
      if (!f) return void res.writeHead(404).end('not found');
      const size = f.data.length;
      const headers: Record<string, string | number> = { etag: f.etag, 'accept-ranges': 'bytes' };
      if (req.method === 'HEAD') {
        requests.head++;
        return void res.writeHead(200, { ...headers, 'content-length': size }).end();
      }
      let start = 0;
      let end = size - 1;
      let status = 200;
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      if (m) {
        start = Number(m[1]);
        end = m[2] ? Math.min(Number(m[2]), size - 1) : size - 1;
        if (start > end) return void res.writeHead(416, { 'content-range': `bytes */${size}` }).end();
        status = 206;
        headers['content-range'] = `bytes ${start}-${end}/${size}`;
        requests.range++;
      } else requests.get++;
      res.writeHead(status, { ...headers, 'content-length': end - start + 1 });
      for (let at = start; at <= end && !res.destroyed;) {
        const chunk = f.data.subarray(at, Math.min(at + 65536, end + 1));
        at += chunk.length;
        served += chunk.length;
        if (opts.chunkDelayMs) await new Promise((r) => setTimeout(r, opts.chunkDelayMs));
        if (!res.write(chunk))
          await new Promise<void>((r) => {
            const done = () => {
              res.off('drain', done).off('close', done);
              r();
            };
            res.once('drain', done).once('close', done);
          });
      }
      res.end();
    })();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    base: `http://127.0.0.1:${port}`,
    served: () => served,
    requests,
    put(path, data, version = '1') {
      files.set(path, { data, etag: `"${version}"` });
    },
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/**
 * The flags of a `dfnode get` that plays one node of a test cluster on loopback: its own cache and state
 * directories below `dir` (suffixed with `name`), any free block-server port, the cluster token, JSON output.
 */
export function getNodeFlags(dir: string, name: string, token: string, seed?: string): string[] {
  return [
    '--cache-dir',
    join(dir, `cache${name}`),
    '--state-dir',
    join(dir, `state${name}`),
    '--p2p-listen',
    '127.0.0.1:0',
    ...(seed ? ['--seeds', seed] : []),
    '--cluster-token',
    token,
    '--json',
  ];
}
