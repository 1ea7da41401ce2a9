/**
 * The block client against a lying peer (real HTTP server on loopback): a body longer than asked for or
 * without a declared length is refused unread (the peer cannot make this host buffer it), a shorter one
 * fails, and so does a long error answer.
 */
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';

const DIGEST = 'sha256:' + 'ef'.repeat(32);
const ASKED = 64 * 1024;
const LIE = 64 * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024, 7);

/** Writes `total` bytes in chunks, waiting for the socket to drain; resolves with how many were written. */
function flood(res: ServerResponse, total: number): Promise<number> {
  return new Promise((resolve) => {
    let sent = 0;
    const finish = () => resolve(sent);
    res.once('close', finish);
    const pump = () => {
      while (sent < total && !res.destroyed) {
        sent += CHUNK.length;
        if (!res.write(CHUNK)) return void res.once('drain', pump);
      }
      res.end();
    };
    pump();
  });
}

describe('block client: a peer that lies about the body', () => {
  let server: Server;
  let address: string;
  let written: Promise<number> | undefined;
  let mode = '';

  beforeAll(async () => {
    server = createServer((_req, res) => {
      if (mode === 'chunked') {
        res.writeHead(200, { 'content-type': 'application/octet-stream' });
        written = flood(res, LIE);
      } else if (mode === 'declared') {
        res.writeHead(200, { 'content-length': LIE });
        written = flood(res, LIE);
      } else if (mode === 'short') {
        // one byte short, then the connection closes
        res.writeHead(200, { 'content-length': ASKED });
        res.write(Buffer.alloc(ASKED - 1), () => res.destroy());
      } else if (mode === 'error') {
        res.writeHead(500);
        written = flood(res, LIE);
      } else {
        res.writeHead(200, { 'content-length': ASKED });
        res.end(Buffer.alloc(ASKED, 1));
      }
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    address = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });

  const fetch = async () => {
    const client = new HttpBlockClient('t');
    try {
      return await client.get(address, DIGEST, 0, ASKED, AbortSignal.timeout(60_000));
    } finally {
      await client.close();
    }
  };

  it('refuses a body without a declared length (chunked) without reading it', async () => {
    mode = 'chunked';
    const err = await fetch().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DfError);
    expect((err as DfError).code).toBe('NETWORK');
    expect((err as DfError).message).toMatch(/does not declare its length/);
    // the peer could push only what the socket buffers held before the client hung up, not its 64 MiB
    expect(await written).toBeLessThan(LIE / 4);
  });

  it('refuses a body that announces another length without reading it', async () => {
    mode = 'declared';
    const err = await fetch().catch((e: unknown) => e);
    expect((err as DfError).message).toMatch(/announced 67108864 bytes, not the 65536 asked for/);
    expect(await written).toBeLessThan(LIE / 4);
  });

  it('fails on a short body', async () => {
    mode = 'short';
    await expect(fetch()).rejects.toThrow(/got 65535 of 65536 bytes/);
  });

  it('reads only the start of a long error answer', async () => {
    mode = 'error';
    await expect(fetch()).rejects.toThrow(/HTTP 500/);
    expect(await written).toBeLessThan(LIE / 4);
  });

  it('still reads an honest answer', async () => {
    mode = 'ok';
    expect((await fetch()).equals(Buffer.alloc(ASKED, 1))).toBe(true);
  });
});
