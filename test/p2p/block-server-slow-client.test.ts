/**
 * The block server's request limit (requestTimeoutMs) is on a request that makes no progress, not on a
 * slow transfer: a 16 MiB range read steadily by a client slower than the limit allows for the whole body
 * arrives complete (it used to be cut at the limit, which nodes saw as "other side closed" from a seed
 * sending many pieces over a thin uplink, and then isolated the seed as down); a read that waits for bytes
 * still on their way is kept alive by their progress; a request that really stalls is still answered 504.
 * Real listener on loopback, raw socket clients.
 */
import { connect, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { CLUSTER_TOKEN_HEADER } from '../../src/p2p/auth.js';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';

const MiB = 1024 * 1024;
const DIGEST = 'sha256:' + '5a'.repeat(32);
const DATA = Buffer.alloc(16 * MiB, 7);

const cleanup: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const f of cleanup.splice(0)) await f();
});

async function start(provider: BlobProvider, requestTimeoutMs: number): Promise<number> {
  const server = new BlockServer({ provider, clusterToken: 't', requestTimeoutMs });
  const address = await server.listen('127.0.0.1:0');
  cleanup.push(() => server.close());
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/**
 * GET of `length` bytes, the body read at most `chunk` bytes per `pauseMs` (back-pressure reaches the
 * server once the socket buffers are full). Resolves with the status and the body bytes received.
 */
async function slowGet(
  port: number,
  length: number,
  chunk: number,
  pauseMs: number,
): Promise<{ status: number; body: number }> {
  const socket: Socket = connect(port, '127.0.0.1');
  cleanup.push(async () => void socket.destroy());
  socket.write(
    `GET /blobs/${DIGEST}?offset=0&length=${length} HTTP/1.1\r\nhost: x\r\n${CLUSTER_TOKEN_HEADER}: t\r\n` +
      'connection: close\r\n\r\n',
  );
  let head = '';
  let status = 0;
  let body = 0;
  socket.pause();
  for (;;) {
    const c = (socket.read(chunk) ?? socket.read()) as Buffer | null;
    if (c) {
      if (!status) {
        head += c.toString('latin1');
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) continue;
        status = Number(head.slice(9, 12));
        body += Buffer.byteLength(head.slice(end + 4), 'latin1');
      } else body += c.length;
      await new Promise((r) => setTimeout(r, pauseMs));
      continue;
    }
    if (socket.readableEnded || socket.destroyed) break;
    await new Promise<void>((r) => {
      const go = () => {
        socket.off('readable', go).off('end', go).off('close', go);
        r();
      };
      socket.on('readable', go).on('end', go).on('close', go);
    });
  }
  return { status, body };
}

describe('block server: idle limit', () => {
  it('sends a range to a client that reads slower than the limit allows for the whole body, but steadily', async () => {
    const port = await start(
      { get: async () => ({ size: DATA.length, read: async (o, l) => DATA.subarray(o, o + l) }) },
      500,
    );
    // 64 KiB per 10 ms at most: 16 MiB take well over the 500 ms limit
    const got = await slowGet(port, DATA.length, 64 * 1024, 10);
    expect(got).toEqual({ status: 200, body: DATA.length });
  });

  it('a read waiting for bytes on their way is kept alive by their progress; a stalled one gets 504', async () => {
    let stall = false;
    const port = await start(
      {
        get: async (_d, hint) => ({
          size: MiB,
          read: async (o, l) => {
            // the bytes arrive over 1.2 s (longer than the 400 ms limit), telling of their progress
            for (let i = 0; i < 12; i++) {
              await new Promise((r) => setTimeout(r, 100));
              if (!stall) hint.alive?.();
            }
            return DATA.subarray(o, o + l);
          },
        }),
      },
      400,
    );
    expect(await slowGet(port, MiB, MiB, 0)).toEqual({ status: 200, body: MiB });
    stall = true;
    expect((await slowGet(port, MiB, MiB, 0)).status).toBe(504);
  });
});
