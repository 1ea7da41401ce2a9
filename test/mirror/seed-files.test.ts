/**
 * A seed's raw files over a real cache directory and a real HTTP origin: only allowed origins are
 * contacted, the file is fetched once however many nodes ask at once, a URL is reused while the origin's
 * ETag is unchanged and fetched again when it changes, and pieces are served from the cache.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CacheManager } from '../../src/cache/cache-manager.js';
import { decodeTable, pieceSizeFor, verifyPiece } from '../../src/mirror/piece-table.js';
import { SeedFiles } from '../../src/mirror/seed-files.js';
import { sha256Digest } from '../helpers/digest.js';
import { startFileOrigin } from '../helpers/file-origin.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

async function setup(origins: (base: string) => string[]) {
  const { dir, cleanup } = await tempDir('dfnode-seed-files-');
  cleanups.push(cleanup);
  const origin = await startFileOrigin();
  cleanups.push(() => origin.close());
  const cache = new CacheManager({ dir, highWatermark: 1e12, lowWatermark: 1e12 });
  await cache.init();
  cleanups.push(() => cache.close());
  const files = new SeedFiles({ cache, origins: origins(origin.base), idleTimeoutMs: 10_000 });
  await files.init();
  cleanups.push(() => files.close());
  const signal = new AbortController().signal;
  const q = (o: Record<string, string>) => new URLSearchParams(o);
  return { origin, files, signal, q };
}

describe('seed files', () => {
  it('fetches an allowed URL once for many nodes at once and serves verified pieces', async () => {
    const t = await setup((b) => [`${b}/pub/`]);
    const data = randomBytes(9 * 1024 * 1024 + 1);
    t.origin.put('/pub/f', data);
    const url = `${t.origin.base}/pub/f`;
    const answers = await Promise.all([1, 2, 3].map(() => t.files.table(t.q({ url }), t.signal)));
    expect(t.origin.requests.get).toBe(1);
    const table = decodeTable(answers[0]!, sha256Digest(data));
    expect(answers.every((a) => a.equals(answers[0]!))).toBe(true);
    // pieces of pieceSizeFor (a power of two that divides 9 MiB): the last one is a single byte
    const P = pieceSizeFor(data.length);
    expect(table.pieceSize).toBe(P);
    expect(table.pieces).toHaveLength((9 * 1024 * 1024) / P + 1);
    const served = t.files.served(table.digest)!;
    expect(served.size).toBe(data.length);
    const piece = (await served.read(9 * 1024 * 1024, 1, t.signal)) as Buffer;
    verifyPiece(table, (9 * 1024 * 1024) / P, piece);
    expect(t.files.served(sha256Digest('not held'))).toBeUndefined();
  });

  it('refuses origins p2p.seedOrigins does not allow without contacting them', async () => {
    const t = await setup((b) => [`${b}/pub/`]);
    t.origin.put('/private/f', randomBytes(10));
    for (const url of [
      `${t.origin.base}/private/f`,
      `${t.origin.base.replace('127.0.0.1', 'localhost')}/pub/f`,
    ])
      await expect(t.files.table(t.q({ url }), t.signal)).rejects.toThrow(/not in p2p\.seedOrigins/);
    await expect(t.files.table(t.q({ url: 'file:///etc/passwd' }), t.signal)).rejects.toThrow(/only http/);
    await expect(
      t.files.table(t.q({ repo: 'reg.example/x', digest: sha256Digest('x') }), t.signal),
    ).rejects.toThrow(/p2p\.seedRegistries/);
    expect(t.origin.requests).toMatchObject({ get: 0, head: 0, range: 0 });
  });

  it('reuses a URL while its ETag is unchanged, fetches it again when it changes', async () => {
    const t = await setup(() => ['*']);
    const v1 = randomBytes(100_000);
    const v2 = randomBytes(100_000);
    t.origin.put('/f', v1, 'a');
    const url = `${t.origin.base}/f`;
    expect(decodeTable(await t.files.table(t.q({ url }), t.signal)).digest).toBe(sha256Digest(v1));
    expect(decodeTable(await t.files.table(t.q({ url }), t.signal)).digest).toBe(sha256Digest(v1));
    expect(t.origin.requests).toMatchObject({ get: 1, head: 1 });
    t.origin.put('/f', v2, 'b');
    expect(decodeTable(await t.files.table(t.q({ url }), t.signal)).digest).toBe(sha256Digest(v2));
    expect(t.origin.requests).toMatchObject({ get: 2, head: 2 });
    // with the digest of what it holds: no request at all
    await t.files.table(t.q({ url, digest: sha256Digest(v2) }), t.signal);
    expect(t.origin.requests).toMatchObject({ get: 2, head: 2 });
    // a wrong digest (answered while the file fills, refused at the end): seed-files-cut-through.test.ts
  });
});
