/**
 * A seed's upload slots for raw files bound the pieces it is sending, not the requests waiting for pieces
 * still on their way from the origin: a node that asks for more pieces ahead than the seed has slots (the
 * mirror keeps 8 per blob in flight, and containerd fetches layers at once) gets every one of them as
 * they arrive, none answered 429. Before, the waiting requests held the slots and the others were told
 * "busy" and asked again a second later, so the node fell behind the seed's fetch from the first pieces
 * on. (Pieces that have arrived still share the 8 slots: the origin here sends one piece at a time.) Real Seed with its SeedFiles and block server, an HTTP origin the test feeds, the node's seed source
 * over loopback.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { Priority } from '../../src/fetch/types.js';
import { decodeTable, MAX_TABLE_BYTES, PieceHasher, pieceSizeFor } from '../../src/mirror/piece-table.js';
import { SeedFiles } from '../../src/mirror/seed-files.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { Seed, type SeedFileProvider } from '../../src/p2p/seed.js';
import { SeedBlockSource } from '../../src/p2p/seed-block-source.js';
import type { RegistryClient } from '../../src/registry/client.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const TOKEN = 'seed-slots-filling-token';
/** The seed's upload slots for raw files (FILE_UPLOAD_SLOTS in src/p2p/seed.ts) and pieces asked for. */
const SLOTS = 8;
const PIECES = SLOTS + 4;
/** The piece size the seed cuts these files into (pieceSizeFor of a few MiB: the smallest). */
const P = pieceSizeFor(PIECES * 1024 * 1024);
const cleanups = cleanupsAfterEach();

/** An origin that answers the size at once and sends the body only as far as the test says. */
async function heldOrigin(body: Buffer) {
  let res: ServerResponse | undefined;
  let sent = 0;
  const server = createServer((_req, r) => {
    r.writeHead(200, { 'content-length': body.length });
    r.flushHeaders();
    res = r;
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/f`,
    /** Sends the body up to byte `to`; the whole of it (and ends) without. */
    send: (to?: number) => {
      if (to === undefined) return void res!.end(body.subarray(sent));
      res!.write(body.subarray(sent, to));
      sent = to;
    },
  };
}

describe("a seed's upload slots while it fetches a file", () => {
  it('serves every planned piece request waiting for the origin, however many: none is told busy', async () => {
    const data = randomBytes(PIECES * P - 123);
    const h = new PieceHasher(P);
    h.update(data);
    const table = h.finish();
    const origin = await heldOrigin(data);
    const { dir, cleanup } = await tempDir('dfnode-seed-slots-');
    cleanups.push(cleanup);
    const config = loadConfig({
      env: {},
      flags: {
        cache: { dir: join(dir, 'seed-cache') },
        p2p: { clusterToken: TOKEN, listen: '127.0.0.1:0', seedFill: false },
      },
    });
    // requests that reached the seed (each asks it for the file once)
    let arrived = 0;
    const seed = new Seed({
      config,
      client: {} as RegistryClient,
      files: (deps) => {
        const files = new SeedFiles({ ...deps, origins: ['*'], idleTimeoutMs: 60_000 });
        const counted: SeedFileProvider = {
          init: () => files.init(),
          table: (q, s) => files.table(q, s),
          served: (d) => {
            arrived++;
            return files.served(d);
          },
          releaseIdle: (ms) => files.releaseIdle(ms),
          close: () => files.close(),
        };
        return counted;
      },
    });
    const { blocks } = await seed.start();
    cleanups.push(() => seed.close());
    const http = new HttpBlockClient(TOKEN, undefined, 'node-1');
    cleanups.push(() => http.close());
    const signal = AbortSignal.timeout(60_000);
    // the table when the origin answered: filling, no piece yet
    const first = decodeTable(
      await http.fileTable(blocks, { url: origin.url, digest: table.digest }, MAX_TABLE_BYTES, signal),
      table.digest,
    );
    expect(first).toMatchObject({ size: data.length, pieceSize: P, filling: true, pieces: [] });
    const src = new SeedBlockSource({
      seeds: [blocks],
      repo: '',
      http,
      isolation: new Isolation({ baseMs: 60_000 }),
      timeoutMs: 30_000,
    });
    const blob = { digest: table.digest, size: table.size };
    const digests: (Buffer | undefined)[] = [];
    const pieces = Array.from({ length: PIECES }, (_, u) =>
      src.fetch(blob, u * P, Math.min(P, data.length - u * P), AbortSignal.timeout(60_000), {
        priority: Priority.Fill,
        planned: true,
        pieceDigest: (d: Buffer) => (digests[u] = d),
      }),
    );
    // every request is at the seed, waiting for the origin, before any byte of the file is sent
    while (arrived < PIECES) await new Promise((r) => setTimeout(r, 5));
    // then piece by piece, each once the one before has reached the node: the seed sends one at a time
    for (let u = 0; u < PIECES; u++) {
      origin.send(u < PIECES - 1 ? (u + 1) * P : undefined);
      await pieces[u]!.catch(() => undefined);
    }
    const got = await Promise.allSettled(pieces);
    expect(got.map((g) => g.status)).toEqual(Array<string>(PIECES).fill('fulfilled'));
    expect(seed.counters.busy).toBe(0);
    got.forEach((g, u) => {
      const piece = (g as PromiseFulfilledResult<Buffer>).value;
      expect(piece.equals(data.subarray(u * P, (u + 1) * P))).toBe(true);
      // each told with the digest a node checks it against
      expect(digests[u]?.equals(table.pieces[u]!)).toBe(true);
    });
  });
});
