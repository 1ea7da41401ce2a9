/**
 * P2pNode.prepare → TrackerClient.connect: a node connects to a blob's tracker while the layer loads its
 * TOC, so that the first announce and lookup (which the fill waits for) find the connection open. A real
 * tracker on loopback behind a TCP relay that counts the connections made to it.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { TrackerClient, serveTracker } from '../../src/p2p/tracker-service.js';
import { TrackerState } from '../../src/p2p/tracker-state.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const TOKEN = 'tracker-connect-token';
const cleanups = cleanupsAfterEach();

/** A relay to `target` on an ephemeral loopback port; counts the connections it accepted. */
async function relay(target: number): Promise<{ port: number; accepted: () => number }> {
  let n = 0;
  const sockets = new Set<Socket>();
  const server: Server = createServer((a) => {
    n++;
    const b = createConnection(target, '127.0.0.1');
    for (const s of [a, b]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    a.pipe(b).pipe(a);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(
    () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  );
  return { port: (server.address() as { port: number }).port, accepted: () => n };
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (cond()) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`timed out waiting for ${what}`);
}

describe('tracker client connect', () => {
  it('opens the connection before any call; the first call then uses it', async () => {
    const tracker = await serveTracker(new TrackerState(), '127.0.0.1:0', TOKEN);
    cleanups.push(() => tracker.stop());
    const r = await relay(Number(tracker.address.split(':').pop()));
    const c = new TrackerClient(`127.0.0.1:${r.port}`, TOKEN, 5000);
    cleanups.push(() => c.close());
    await new Promise((res) => setTimeout(res, 100));
    expect(r.accepted()).toBe(0); // a client alone connects lazily
    c.connect();
    await until(() => r.accepted() === 1, 'the connection');
    const a = await c.lookup({ blob: 'sha256:' + '2'.repeat(64), peer_id: 'n1', max_peers: 4 });
    expect(a.holders ?? []).toEqual([]);
    expect(r.accepted()).toBe(1);
  });
});

describe('tracker listen', () => {
  it('a port in use is said plainly (callers pick another port on "is in use")', async () => {
    const taken: Server = createServer();
    await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => taken.close(() => r())));
    const port = (taken.address() as { port: number }).port;
    const err = await serveTracker(new TrackerState(), `127.0.0.1:${port}`, TOKEN).catch((e: unknown) => e);
    expect((err as Error).message).toBe(
      `tracker address 127.0.0.1:${port} is in use (the tracker listens on the block server's port + 1); set p2p.listen`,
    );
  });
});
