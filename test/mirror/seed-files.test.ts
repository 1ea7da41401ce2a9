/**
 * A seed's raw files over a real cache directory and a real HTTP origin: only allowed origins are
 * contacted, the file is fetched once however many nodes ask at once, a URL is reused while the origin's
 * ETag is unchanged and fetched again when it changes, and pieces are served from the cache.
 */
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CacheManager } from '../../src/cache/cache-manager.js';
import { decodeTable, PieceLayout, pieceSizeFor, verifyPiece } from '../../src/mirror/piece-table.js';
import { SeedFiles } from '../../src/mirror/seed-files.js';
import { sha256Digest } from '../helpers/digest.js';
import { startFileOrigin } from '../helpers/file-origin.js';
import { halfHeldUnderOldPieces, OLD_PIECE } from '../helpers/piece-file.js';
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
  return { origin, files, signal, q, cache };
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

  it('keeps a fetched file in a cache left half-filled under pieces of another size, unless it is open elsewhere', async () => {
    const t = await setup((b) => [`${b}/pub/`]);
    const files = [randomBytes(3 * 1024 * 1024 + 5), randomBytes(3 * 1024 * 1024 + 7)];
    // as a seed of the 1 MiB rule restarted while moving a file into its cache left it: one piece present
    const halfHeld = (b: Buffer) => halfHeldUnderOldPieces(t.cache, sha256Digest(b), b);
    const table = async (b: Buffer, name: string) => {
      t.origin.put(`/pub/${name}`, b);
      const q = t.q({ url: `${t.origin.base}/pub/${name}`, digest: sha256Digest(b) });
      return decodeTable(await t.files.table(q, t.signal), sha256Digest(b));
    };
    await t.cache.release(await halfHeld(files[0]!));
    const got = await table(files[0]!, 'a');
    expect(got.pieceSize).toBe(pieceSizeFor(files[0]!.length));
    // moved into the cache once fetched: complete, under the table's pieces
    const info = () => t.cache.list().find((b) => b.digest === got.digest);
    for (let i = 0; i < 200 && !info()?.complete; i++) await new Promise((r) => setTimeout(r, 20));
    expect(info()).toMatchObject({
      complete: true,
      blocks: new PieceLayout(files[0]!.length, got.pieceSize).units,
    });
    const served = t.files.served(got.digest)!;
    expect(((await served.read(0, files[0]!.length, t.signal)) as Buffer).equals(files[0]!)).toBe(true);
    // open elsewhere (a DFB layer being read): served from the fetch, its reader's cache left as it is
    const open = await halfHeld(files[1]!);
    try {
      const second = await table(files[1]!, 'b');
      const bytes = await t.files.served(second.digest)!.read(0, files[1]!.length, t.signal);
      const whole = Buffer.isBuffer(bytes) ? bytes : Buffer.concat(await Promise.all(bytes!));
      expect(whole.equals(files[1]!)).toBe(true);
      await new Promise((r) => setTimeout(r, 200)); // past the move into the cache (refused)
      expect(open.unitCount).toBe(new PieceLayout(files[1]!.length, OLD_PIECE).units);
      expect(open.has(0)).toBe(true);
    } finally {
      await t.cache.release(open);
    }
  });
});
