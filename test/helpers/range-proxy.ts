/**
 * A loopback HTTP proxy in front of a registry for the node tests: logs every request (blob range reads with
 * their bytes), and can delay, hold, corrupt or refuse them.
 */
import { flipBits } from './bytes.js';

export interface ProxiedRequest {
  method: string;
  path: string;
  /** Digest of a blob GET (`sha256:...`), else undefined. */
  blob?: string;
  range?: { start: number; end: number };
  /** Body bytes sent to the client. */
  bytes: number;
  status: number;
  corrupted: boolean;
  /** The client went away before the whole answer was sent (a cancelled request). */
  aborted?: boolean;
}

export interface RangeProxyControls {
  /** Delay before answering each blob request (ms). */
  delayMs: number;
  /** Decides per blob GET whether to flip a byte in its body. */
  corrupt?: (r: { blob: string; range?: { start: number; end: number }; n: number }) => boolean;
  /** While true, new connections are refused (destroyed at once) and open ones are cut. */
  down: boolean;
  /** Decides per blob GET whether to hold it (logged on arrival, forwarded when the promise settles). */
  hold?: (r: {
    blob: string;
    range?: { start: number; end: number };
    n: number;
  }) => Promise<void> | undefined;
}

export interface RangeProxy {
  host: string;
  url: string;
  log: ProxiedRequest[];
  controls: RangeProxyControls;
  /** Sum of body bytes of blob GETs for `digest`, and their count. */
  blobBytes(digest: string): number;
  blobRequests(digest: string): number;
  /** Resolves once every request logged so far has ended (answered, or its client gone). */
  idle(): Promise<void>;
  stop(): Promise<void>;
}

/** A loopback HTTP proxy in front of a registry for the node tests: counts blob range reads and can fault them. */
export async function startRangeProxy(target: string): Promise<RangeProxy> {
  const { createServer, request } = await import('node:http');
  const [thost, tport] = target.split(':');
  const log: ProxiedRequest[] = [];
  const controls: RangeProxyControls = { delayMs: 0, down: false };
  const sockets = new Set<import('node:net').Socket>();
  const open = new Set<ProxiedRequest>();
  const idleWaiters: (() => void)[] = [];
  let blobGets = 0;
  const server = createServer((req, res) => {
    if (controls.down) {
      req.socket.destroy();
      return;
    }
    const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? '');
    const blob = req.method === 'GET' && m ? m[1] : undefined;
    const rm = /^bytes=(\d+)-(\d+)$/.exec(String(req.headers.range ?? ''));
    const range = rm ? { start: Number(rm[1]), end: Number(rm[2]) } : undefined;
    const entry: ProxiedRequest = {
      method: req.method ?? '',
      path: req.url ?? '',
      blob,
      range,
      bytes: 0,
      status: 0,
      corrupted: false,
    };
    log.push(entry);
    open.add(entry);
    let up: import('node:http').ClientRequest | undefined;
    res.on('close', () => {
      if (!res.writableFinished) {
        entry.aborted = true;
        up?.destroy(); // stop counting bytes nobody will read
      }
      open.delete(entry);
      if (open.size === 0) for (const w of idleWaiters.splice(0)) w();
    });
    const n = blob ? ++blobGets : 0;
    const corrupt = blob ? (controls.corrupt?.({ blob, range, n }) ?? false) : false;
    const forward = () => {
      // a client that went away while its request was held or delayed (a killed daemon) gets nothing
      // forwarded, so bytes counted after its death are never ones it asked for
      if (res.closed) return;
      up = request(
        { host: thost, port: Number(tport), method: req.method, path: req.url, headers: req.headers },
        (ures) => {
          entry.status = ures.statusCode ?? 0;
          res.writeHead(ures.statusCode ?? 502, ures.headers);
          if (!corrupt) {
            ures.on('data', (d: Buffer) => (entry.bytes += d.length));
            ures.pipe(res);
            return;
          }
          const parts: Buffer[] = [];
          ures.on('data', (d: Buffer) => parts.push(d));
          ures.on('end', () => {
            const body = Buffer.concat(parts);
            if (body.length) {
              flipBits(body, body.length >> 1);
              entry.corrupted = true;
            }
            entry.bytes += body.length;
            res.end(body);
          });
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    };
    const held = blob ? controls.hold?.({ blob, range, n }) : undefined;
    const go = () => (blob && controls.delayMs > 0 ? setTimeout(forward, controls.delayMs) : forward());
    if (held) void held.finally(go);
    else go();
  });
  server.on('connection', (s) => {
    if (controls.down) {
      s.destroy();
      return;
    }
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const host = `127.0.0.1:${(server.address() as import('node:net').AddressInfo).port}`;
  const proxy: RangeProxy = {
    host,
    url: `http://${host}`,
    log,
    controls,
    blobBytes: (d) => log.filter((e) => e.blob === d).reduce((a, e) => a + e.bytes, 0),
    blobRequests: (d) => log.filter((e) => e.blob === d).length,
    idle: () => (open.size === 0 ? Promise.resolve() : new Promise<void>((r) => idleWaiters.push(r))),
    stop: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
  // cut open keep-alive connections when the proxy goes down
  let wasDown = false;
  const t = setInterval(() => {
    if (controls.down && !wasDown) for (const s of sockets) s.destroy();
    wasDown = controls.down;
  }, 20);
  t.unref();
  return proxy;
}
