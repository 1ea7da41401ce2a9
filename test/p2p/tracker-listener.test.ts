/**
 * The seed's gRPC tracker listener (block port + 1) under connections that never call: grpc-js alone kept a
 * silent TCP connection, or one that stops inside the HTTP/2 preface, open forever, and any number of them
 * (opening one needs no token). Now: closed when the HTTP/2 opening has not arrived in time, an idle HTTP/2
 * connection is sent away, the count is bounded, and real clients are answered throughout.
 */
import { connect as h2connect } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { serveTracker, TrackerClient } from '../../src/p2p/tracker-service.js';
import { TrackerState } from '../../src/p2p/tracker-state.js';

const TOKEN = 'tracker-listener-token';
const BLOB = 'sha256:' + 'e'.repeat(64);

/** Resolves with ms until the server closed the connection, or -1 if still open after `waitMs`. */
function closedWithin(port: number, send: string, waitMs: number, keep: Socket[]): Promise<number> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = connect(port, '127.0.0.1', () => send && s.write(send));
    keep.push(s);
    const t = setTimeout(() => resolve(-1), waitMs);
    s.on('error', () => undefined);
    // read what comes (the server's SETTINGS): a socket whose data is left unread never reports its end
    s.resume();
    s.on('close', () => {
      clearTimeout(t);
      resolve(Date.now() - t0);
    });
  });
}

describe('gRPC tracker listener: connections that never call', () => {
  const keep: Socket[] = [];
  let stop: (() => Promise<void>) | undefined;
  afterEach(async () => {
    for (const s of keep.splice(0)) s.destroy();
    await stop?.();
    stop = undefined;
  });

  const start = async (opts: Parameters<typeof serveTracker>[4]) => {
    const t = await serveTracker(new TrackerState(), '127.0.0.1:0', TOKEN, undefined, opts);
    stop = t.stop;
    return { address: t.address, port: Number(t.address.slice(t.address.lastIndexOf(':') + 1)) };
  };
  const lookupWorks = async (address: string) => {
    const c = new TrackerClient(address, TOKEN, 5000);
    try {
      return (await c.lookup({ blob: BLOB, peer_id: 'p', want: [0] })).holders.length === 0;
    } finally {
      c.close();
    }
  };

  it('closes a silent connection and one stopped inside the preface; answers a client meanwhile', async () => {
    const { address, port } = await start({ prefaceMs: 500 });
    const silent = closedWithin(port, '', 5000, keep);
    const partial = closedWithin(port, 'PRI * HTTP/2.0\r\n', 5000, keep);
    expect(await lookupWorks(address)).toBe(true);
    const [a, b] = await Promise.all([silent, partial]);
    expect(a).toBeGreaterThanOrEqual(400);
    expect(a).toBeLessThan(5000);
    expect(b).toBeGreaterThanOrEqual(400);
    expect(b).toBeLessThan(5000);
    // the client's connection was not closed by that rule: it calls again on it
    expect(await lookupWorks(address)).toBe(true);
  });

  it('sends an HTTP/2 connection without calls away after the idle time', async () => {
    const { port } = await start({ prefaceMs: 60_000, idleMs: 1000 });
    const session = h2connect(`http://127.0.0.1:${port}`);
    session.on('error', () => undefined);
    const t0 = Date.now();
    const gone = await new Promise<number>((resolve) => {
      const t = setTimeout(() => resolve(-1), 10_000);
      const done = () => {
        clearTimeout(t);
        resolve(Date.now() - t0);
      };
      session.once('goaway', done);
      session.once('close', done);
    });
    session.destroy();
    expect(gone).toBeGreaterThanOrEqual(900);
    expect(gone).toBeLessThan(10_000);
  });

  it('keeps at most its bound of connections from one address', async () => {
    let refused = 0;
    const { address, port } = await start({
      prefaceMs: 60_000,
      limit: { max: 100, perAddress: 8, onRefused: () => refused++ },
    });
    const results = await Promise.all(Array.from({ length: 12 }, () => closedWithin(port, '', 1000, keep)));
    expect(results.filter((r) => r === -1)).toHaveLength(8);
    expect(refused).toBe(4);
    // the flood's connections from 127.0.0.1 fill its share; once they are gone, a client is answered
    for (const s of keep.splice(0)) s.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect(await lookupWorks(address)).toBe(true);
  });
});
