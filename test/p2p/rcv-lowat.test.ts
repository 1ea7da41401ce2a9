/**
 * SO_RCVLOWAT on the block client's sockets (src/util/rcv-lowat.ts), against a real HTTP server on
 * loopback that trickles each body out in 1 KiB writes: the client wakes about once per 64 KiB instead of
 * once per write, never waits for bytes that will not come (bodies of every size around the mark, a
 * reused keep-alive connection, a short error answer after a body on the same connection), and hears of a
 * trickling body's bytes within about FALLBACK_MS (a fill run's, which nobody waits on, per full mark of up
 * to 256 KiB, until a reader waits on it: then at once).
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureNativeAddon } from '../../native/build-addon.js';
import { isSourceUnavailable, Priority, type FetchContext } from '../../src/fetch/types.js';
import { bodyHold } from '../../src/fetch/body-hold.js';
import { HttpBlockClient, type BlockGetHooks } from '../../src/p2p/http-block-client.js';
import { FALLBACK_MS, FILL_HOLD_MS, fillHoldMs, rcvLowatEnabled } from '../../src/util/rcv-lowat.js';
import { requireConditions } from '../helpers/require.js';

const DIGEST = 'sha256:' + 'ab'.repeat(32);
const STEP = 1024;

const buildProblem = ensureNativeAddon();
const req = requireConditions({ [`native addons built (${buildProblem ?? ''})`]: !buildProblem });

function body(length: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + 7) & 0xff;
  return b;
}

describe.skipIf(req.skip)('block client with SO_RCVLOWAT', () => {
  let server: Server;
  let address: string;
  let connections = 0;
  let client: HttpBlockClient;

  beforeAll(async () => {
    server = createServer((rq, res) => {
      const q = new URL(rq.url ?? '/', 'http://x').searchParams;
      const length = Number(q.get('length'));
      if (q.get('offset') === '404') {
        res.writeHead(404, { 'content-length': 9 });
        res.end('not here\n');
        return;
      }
      res.socket?.setNoDelay(true);
      res.writeHead(200, { 'content-length': length });
      const data = body(length);
      // offset 1: a trickle, 900 bytes every 50 ms; offset 2: 2 KiB every 20 ms; else 1 KiB every millisecond
      const offset = q.get('offset');
      const [step, every] = offset === '1' ? [900, 50] : offset === '2' ? [2048, 20] : [STEP, 1];
      let at = 0;
      const next = () => {
        if (res.destroyed) return;
        const n = Math.min(step, length - at);
        res.write(data.subarray(at, at + n));
        at += n;
        if (at < length) setTimeout(next, every);
        else res.end();
      };
      next();
    });
    server.on('connection', () => connections++);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
    client = new HttpBlockClient('token');
  });

  afterAll(async () => {
    await client?.close();
    await new Promise((r) => server?.close(r));
  });

  /** A range of the test server's body (its offset picks how it trickles), with the client's hooks. */
  const getWith = (offset: number, length: number, hooks: BlockGetHooks) =>
    client.get(address, DIGEST, offset, length, AbortSignal.timeout(20_000), {}, hooks);

  /** Reads of a whole trickled body (as a fill run's, held up to FILL_HOLD_MS, or a read's) the client woke for. */
  const wakeUps = async (offset: number, length: number, fill: boolean) => {
    let calls = 0;
    const got = await getWith(offset, length, {
      progress: () => calls++,
      holdMs: fill ? () => FILL_HOLD_MS : undefined,
    });
    expect(got.equals(body(length))).toBe(true);
    return calls;
  };

  it('is in use when the addon is built', () => {
    expect(rcvLowatEnabled()).toBe(true);
  });

  it('wakes about once per 64 KiB of a trickled body, and gets every byte', async () => {
    let calls = 0;
    const length = 300_000;
    const got = await getWith(0, length, { progress: () => calls++ });
    expect(got.equals(body(length))).toBe(true);
    // ~293 writes 1 ms apart: one read each without the mark
    expect(calls).toBeLessThan(30);
  });

  it('bodies of every size around the mark, one after another on one connection, then an error answer', async () => {
    const before = connections;
    for (const length of [1, 1000, 65_535, 65_536, 65_537, 131_073, 200_000]) {
      const got = await client.get(address, DIGEST, 0, length, AbortSignal.timeout(20_000));
      expect(got.equals(body(length)), `${length} bytes`).toBe(true);
    }
    // a short error answer on the connection whose mark the last body set: read, not waited for
    const err = await client.get(address, DIGEST, 404, 70_000, AbortSignal.timeout(5_000)).catch((e) => e);
    expect(isSourceUnavailable(err)).toBe(true);
    expect(String(err.message)).toMatch(/HTTP 404 not here/);
    expect(connections - before).toBeLessThanOrEqual(1);
  });

  it('a body that trickles slower than the mark is still heard of within about FALLBACK_MS', async () => {
    // 9000 bytes, 900 every 50 ms (~450 ms): a stall limit counts these bytes as they come, not at the end
    const t0 = Date.now();
    const times: number[] = [];
    const got = await getWith(1, 9000, { progress: () => times.push(Date.now() - t0) });
    expect(got.equals(body(9000))).toBe(true);
    expect(times.length).toBeGreaterThanOrEqual(3);
    expect(times[0]!).toBeLessThan(FALLBACK_MS + 150);
  });

  it("a fill run's slow body is heard of per full mark, a read's about every FALLBACK_MS", async () => {
    // 160 KB at ~100 KB/s (~1.6 s): 64 KiB take ~650 ms, well inside FILL_HOLD_MS
    const read = await wakeUps(2, 160_000, false);
    const fill = await wakeUps(2, 160_000, true);
    expect(FILL_HOLD_MS).toBeGreaterThan(700);
    // a short stall limit (tests') shortens the hold: bytes are heard of well inside it
    expect(fillHoldMs(30_000)).toBe(FILL_HOLD_MS);
    expect(fillHoldMs(520)).toBe(130);
    expect(fillHoldMs(100)).toBe(FALLBACK_MS);
    // a read: one wake-up per fallback (~16); a fill: at the hold (1 s: the mark is the whole body) and the rest
    expect(read).toBeGreaterThanOrEqual(8);
    expect(fill).toBeLessThanOrEqual(5);
  });

  it("a fill run's body wakes about once per 256 KiB, a read's once per 64 KiB", async () => {
    // 600 KB at ~1 MB/s (1 KiB a millisecond): a 256 KiB mark fills in ~260 ms, inside the fill's hold
    const read = await wakeUps(0, 600_000, false);
    const fill = await wakeUps(0, 600_000, true);
    // 64 KiB marks: ~9 reads; 256 KiB: ~3
    expect(read).toBeGreaterThanOrEqual(8);
    expect(fill).toBeLessThanOrEqual(5);
  });

  it('a fill run a reader starts waiting on hands over what it holds at once, then every FALLBACK_MS', async () => {
    // the run's context as the fetcher makes it: waitedOn() turns true when a read is promoted onto it, and
    // the fetcher calls the hurry the source gave it (FetchContext.onHurry)
    let waited = false;
    let hurry: (() => void) | undefined;
    const ctx: FetchContext = {
      priority: Priority.Fill,
      waitedOn: () => waited,
      onHurry: (h) => (hurry = h),
    };
    expect(bodyHold({ priority: Priority.Blocked }, 30_000)).toEqual({});
    const hooks = bodyHold(ctx, 30_000);
    expect(hooks.holdMs!()).toBe(FILL_HOLD_MS);
    const t0 = Date.now();
    const after: number[] = [];
    let promotedAt = 0;
    const promote = setTimeout(() => {
      waited = true;
      promotedAt = Date.now() - t0;
      hurry?.();
    }, 400);
    const got = await getWith(2, 160_000, {
      ...hooks,
      progress: () => {
        if (waited) after.push(Date.now() - t0);
      },
    });
    clearTimeout(promote);
    expect(got.equals(body(160_000))).toBe(true);
    expect(hooks.holdMs!()).toBe(FALLBACK_MS);
    expect(hurry).toBeDefined();
    // the ~40 KB held at 400 ms come at once (without the hurry: at the 1 s hold), then a read per ~100 ms
    // to the end (~1.6 s): a fill alone had <= 5
    expect(after[0]! - promotedAt).toBeLessThan(80);
    expect(after.length).toBeGreaterThanOrEqual(6);
  });
});
