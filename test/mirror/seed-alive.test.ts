/**
 * The registry serves a piece only when no seed can (the seed is down), never because the seed is busy or
 * slow (loopback HTTP, real caches): pieces from a seed whose uplink is slow but sending, or that answers
 * 429 for a while, all come from the seed; a seed fetching as many files as it may answers the piece
 * table request 429 with Retry-After and the node asks again without isolating it.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { CacheManager } from '../../src/cache/cache-manager.js';
import { loadConfig } from '../../src/config.js';
import type { BlobRef, BlockSource } from '../../src/fetch/types.js';
import { fetchPieces } from '../../src/mirror/piece-fetcher.js';
import { decodeTable, PieceHasher, PieceLayout } from '../../src/mirror/piece-table.js';
import { SeedFiles } from '../../src/mirror/seed-files.js';
import { CLUSTER_TOKEN_HEADER } from '../../src/p2p/auth.js';
import { BlockServer } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { SeedBlockSource } from '../../src/p2p/seed-block-source.js';
import { sha256Digest } from '../helpers/digest.js';
import { tempDir } from '../helpers/temp.js';
import { trickle } from '../helpers/trickle.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const P = 16 * 1024;
const TOKEN = 'seed-alive-token';
const cleanups = cleanupsAfterEach();

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<string> {
  const s: Server = createServer(handler);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  cleanups.push(async () => {
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  });
  return `127.0.0.1:${(s.address() as AddressInfo).port}`;
}

/** A file in 16 KiB pieces and an empty cache for it. */
async function file(pieces: number) {
  const data = randomBytes(pieces * P - 7);
  const h = new PieceHasher(P);
  h.update(data);
  const table = h.finish();
  const { dir, cleanup } = await tempDir('dfnode-seed-alive-');
  cleanups.push(cleanup);
  const cache = await BlobCache.open({ dir: join(dir, 'c'), digest: table.digest, size: table.size });
  const { blockCount, tocOffset } = new PieceLayout(table.size, P).cacheLayout;
  await cache.setLayout(blockCount, tocOffset);
  cleanups.push(() => cache.close());
  return { data, table, cache };
}

/** Every piece through the seed source `src`, with `reg` behind it: the registry is never asked. */
async function allFromSeed(
  table: Awaited<ReturnType<typeof file>>['table'],
  cache: Awaited<ReturnType<typeof file>>['cache'],
  src: BlockSource,
  reg: ReturnType<typeof origin>,
): Promise<void> {
  const bytes = await fetchPieces({
    table,
    cache,
    sources: [src, reg.s],
    signal: new AbortController().signal,
    concurrency: 4,
  });
  expect(reg.calls).toEqual([]);
  expect(bytes.seed).toBe(table.size);
}

/** The seed tier over loopback HTTP, as the mirror's node uses it (seedTimeoutMs `timeoutMs`). */
function seedSource(seed: string, timeoutMs: number) {
  const http = new HttpBlockClient(TOKEN, undefined, 'node');
  cleanups.push(() => http.close());
  const isolation = new Isolation({ baseMs: 60_000 });
  const src = new SeedBlockSource({ seeds: [seed], repo: '', http, isolation, timeoutMs });
  return { src, isolation };
}

/** The registry: counts the pieces asked of it. */
function origin(data: Buffer) {
  const calls: number[] = [];
  const s: BlockSource = {
    kind: 'registry',
    name: 'registry',
    fetch(_b: BlobRef, offset: number, length: number) {
      calls.push(offset / P);
      return Promise.resolve(Buffer.from(data.subarray(offset, offset + length)));
    },
  };
  return { s, calls };
}

const range = (req: IncomingMessage) => {
  const q = new URL(req.url!, 'http://x').searchParams;
  return { offset: Number(q.get('offset')), length: Number(q.get('length')) };
};

describe('a seed that is alive serves every piece', () => {
  it('a seed whose uplink is slow but sending: every piece from it, none from the registry', async () => {
    const { data, table, cache } = await file(8);
    let requests = 0;
    // each piece takes about 1.4 s, twice its time limit (400 ms + 16 KiB at the floor rate: 650 ms)
    const seed = await serve((req, res) => {
      requests++;
      const { offset, length } = range(req);
      res.writeHead(200, { 'content-length': length });
      trickle(res, data.subarray(offset, offset + length), Math.ceil(length / 14), 100);
    });
    const { src, isolation } = seedSource(seed, 400);
    const reg = origin(data);
    await allFromSeed(table, cache, src, reg);
    expect(requests).toBeGreaterThanOrEqual(8);
    expect(isolation.isolated(seed)).toBe(false);
    expect((await cache.verifyComplete()).ok).toBe(true);
  });

  it('a seed that answers 429 for a while: the pieces wait for it, none from the registry', async () => {
    const { data, table, cache } = await file(4);
    let requests = 0;
    const seed = await serve((req, res) => {
      const { offset, length } = range(req);
      if (requests++ < 6) return void res.writeHead(429, { 'retry-after': '1' }).end('busy');
      res.writeHead(200, { 'content-length': length }).end(data.subarray(offset, offset + length));
    });
    const { src, isolation } = seedSource(seed, 1000);
    const reg = origin(data);
    await allFromSeed(table, cache, src, reg);
    expect(requests).toBeGreaterThan(6);
    expect(isolation.isolated(seed)).toBe(false);
  });

  it('a seed fetching as many files as it may answers the table 429; the node waits and gets it', async () => {
    const { dir, cleanup } = await tempDir('dfnode-seed-alive-files-');
    cleanups.push(cleanup);
    // the origin: /held/N answers its head and holds its body until released; /f answers at once
    const data = randomBytes(3 * P);
    const held: ServerResponse[] = [];
    const originAddr = await serve((req, res) => {
      if (req.url === '/f') return void res.writeHead(200, { 'content-length': data.length }).end(data);
      res.writeHead(200, { 'content-length': 100 });
      res.write(Buffer.alloc(10));
      held.push(res);
    });
    const cache = new CacheManager({ dir, highWatermark: 1e12, lowWatermark: 1e12 });
    await cache.init();
    cleanups.push(() => cache.close());
    const files = new SeedFiles({ cache, origins: ['*'], idleTimeoutMs: 60_000 });
    await files.init();
    cleanups.push(() => files.close());
    const server = new BlockServer({
      provider: { get: () => Promise.resolve(undefined) },
      clusterToken: TOKEN,
      fileTable: (q, signal) => files.table(q, signal),
    });
    const seed = await server.listen('127.0.0.1:0');
    cleanups.push(() => server.close());
    const signal = new AbortController().signal;
    // 16 files being fetched (answered as soon as their origin answered: cut-through)
    for (let i = 0; i < 16; i++)
      await files.table(
        new URLSearchParams({ url: `http://${originAddr}/held/${i}`, digest: sha256Digest(`x${i}`) }),
        new AbortController().signal,
      );
    const query = { url: `http://${originAddr}/f`, digest: sha256Digest(data) };
    const res = await fetch(`http://${seed}/files/table?${new URLSearchParams(query)}`, {
      headers: { [CLUSTER_TOKEN_HEADER]: TOKEN },
    });
    expect(res.status).toBe(429);
    expect(res.headers.get('retry-after')).toBe('1');
    await res.arrayBuffer();

    const node = new P2pNode({
      config: loadConfig({
        env: {},
        flags: { p2p: { seeds: [seed], clusterToken: TOKEN, listen: '127.0.0.1:0' } },
      }),
    });
    cleanups.push(() => node.close());
    let settled = false;
    const got = node.fileTable(query.digest, query, 1 << 20, signal).finally(() => (settled = true));
    // still waiting after several busy answers, and the seed is not taken for down
    await new Promise((r) => setTimeout(r, 1500));
    expect(settled).toBe(false);
    expect(node.seedIsolation.isolated(seed)).toBe(false);
    // one fetch ends (its origin sends too few bytes): the seed takes the file
    held.shift()!.end();
    const { table, seed: from } = await got;
    expect(from).toBe(seed);
    expect(decodeTable(table, query.digest).size).toBe(data.length);
    for (const r of held.splice(0)) r.destroy();
  });
});
