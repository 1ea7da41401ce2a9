/**
 * The send queue of a socket (SIOCOUTQ through native/dfnode_net.c, plus Node's own buffer) and whenSent,
 * which the block server uses to hold an upload slot until an answer has nearly left. Real TCP on loopback;
 * the receiving side reads only when the test says so.
 */
import { once } from 'node:events';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { ensureNativeAddon } from '../../native/build-addon.js';
import { sendQueueBytes, whenSent } from '../../src/util/send-queue.js';
import { requireConditions } from '../helpers/require.js';

const KiB = 1024;
const buildProblem = ensureNativeAddon();
const req = requireConditions({ [`native addons built (${buildProblem ?? ''})`]: !buildProblem });

describe.skipIf(req.skip)('send queue', () => {
  const cleanup: (() => void)[] = [];
  afterEach(() => {
    for (const f of cleanup.splice(0).reverse()) f();
  });

  /** A connected pair: `out` writes, `inn` (paused: reads nothing until resumed) receives. */
  async function pair(): Promise<{ out: Socket; inn: Socket }> {
    const accepted: Socket[] = [];
    const server: Server = createServer({ pauseOnConnect: true }, (s) => accepted.push(s));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as { port: number }).port;
    const out = connect({ host: '127.0.0.1', port });
    await once(out, 'connect');
    while (!accepted.length) await new Promise((r) => setTimeout(r, 5));
    const inn = accepted[0]!;
    cleanup.push(() => {
      out.destroy();
      inn.destroy();
      server.close();
    });
    return { out, inn };
  }

  it('counts what the peer has not taken, and nothing once it has read it', async () => {
    const { out, inn } = await pair();
    expect(sendQueueBytes(out)).toBe(0);
    out.write(Buffer.alloc(256 * KiB, 1));
    await new Promise((r) => setTimeout(r, 50));
    expect(sendQueueBytes(out)).toBeGreaterThan(64 * KiB);
    let got = 0;
    inn.on('data', (d: Buffer) => (got += d.length));
    inn.resume();
    await whenSent(out, 0, { pollMs: 5 });
    expect(sendQueueBytes(out)).toBe(0);
    while (got < 256 * KiB) await new Promise((r) => setTimeout(r, 5));
  });

  it('waits while more than the tail is queued, and resolves once the peer reads', async () => {
    const { out, inn } = await pair();
    out.write(Buffer.alloc(256 * KiB, 2));
    let sent = false;
    const p = whenSent(out, 16 * KiB, { pollMs: 5, stallMs: 10_000 }).then(() => (sent = true));
    await new Promise((r) => setTimeout(r, 150));
    expect(sent).toBe(false);
    inn.resume();
    await p;
    expect(sendQueueBytes(out)).toBeLessThanOrEqual(16 * KiB);
  });

  it('looks less often than every pollMs once it knows the rate the queue drains at', async () => {
    const { out, inn } = await pair();
    out.write(Buffer.alloc(4096 * KiB, 6));
    await new Promise((r) => setTimeout(r, 20));
    // the peer reads 64 KiB every 10 ms: the queue drains over about half a second
    const reader = setInterval(() => inn.read(64 * KiB), 10);
    cleanup.push(() => clearInterval(reader));
    let looks = 0;
    const timers = {
      now: () => Date.now(),
      setTimeout: (f: () => void, ms: number) => (looks++, setTimeout(f, ms)),
      clearTimeout: (t: unknown) => clearTimeout(t as NodeJS.Timeout),
    };
    const t0 = Date.now();
    await whenSent(out, 0, { pollMs: 5, stallMs: 10_000, timers });
    const elapsed = Date.now() - t0;
    expect(sendQueueBytes(out)).toBe(0);
    expect(elapsed).toBeGreaterThan(100);
    // every pollMs would be elapsed / 5 looks; the estimate spaces them up to 40 ms apart
    expect(looks).toBeLessThan(elapsed / 5 / 2);
  });

  it('gives up on a peer that stopped reading or reads a trickle, and at once on a closed socket', async () => {
    const a = await pair();
    a.out.write(Buffer.alloc(256 * KiB, 3));
    const t0 = Date.now();
    await whenSent(a.out, 0, { pollMs: 10, stallMs: 200 });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(180);
    expect(sendQueueBytes(a.out)).toBeGreaterThan(0);

    // one that reads a trickle: given up on after maxMs
    const slow = await pair();
    slow.out.write(Buffer.alloc(256 * KiB, 5));
    const trickle = setInterval(() => slow.inn.read(1), 20);
    cleanup.push(() => clearInterval(trickle));
    const t1 = Date.now();
    await whenSent(slow.out, 0, { pollMs: 10, stallMs: 60_000, maxMs: 300 });
    expect(Date.now() - t1).toBeGreaterThanOrEqual(280);
    expect(Date.now() - t1).toBeLessThan(5000);
    expect(sendQueueBytes(slow.out)).toBeGreaterThan(0);

    const b = await pair();
    b.out.write(Buffer.alloc(256 * KiB, 4));
    const p = whenSent(b.out, 0, { pollMs: 10, stallMs: 60_000 });
    b.out.destroy();
    await p;
    expect(sendQueueBytes(b.out)).toBeUndefined();
  });
});
