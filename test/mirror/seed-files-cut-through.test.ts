/**
 * Cut-through of a seed's raw files, over a real cache directory and a real HTTP origin that the test feeds
 * byte range by byte range: the piece table is answered as soon as the origin answered (marked filling),
 * each piece is served once it has arrived and is hashed (its digest told with it) while the fetch goes on,
 * the last piece only after the whole file matched its digest; an origin that lies fails every waiting
 * read with the mismatch (and the seed answers that, without fetching again); a read of a piece that never
 * arrives is aborted by its reader, or fails when the origin goes away, and leaves no temporary file.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CacheManager } from '../../src/cache/cache-manager.js';
import { decodeTable, pieceSizeFor } from '../../src/mirror/piece-table.js';
import { SeedFiles } from '../../src/mirror/seed-files.js';
import { sha256Digest } from '../helpers/digest.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

/** The piece size of the files here (the smallest: pieceSizeFor of a few MiB). */
const P = pieceSizeFor(3 * 1024 * 1024);
const cleanups = cleanupsAfterEach();

/** An origin that sends `body` only as far as the test says (send), then ends or cuts the response. */
async function feedOrigin(body: Buffer) {
  let res: ServerResponse | undefined;
  let sent = 0;
  let gets = 0;
  let answered!: () => void;
  const started = new Promise<void>((r) => (answered = r));
  const server = createServer((_req, r) => {
    gets++;
    sent = 0;
    r.writeHead(200, { 'content-length': body.length });
    r.flushHeaders();
    res = r;
    answered();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(async () => {
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
  return {
    base: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    gets: () => gets,
    started,
    /** Sends the body up to byte `to`. */
    send(to: number) {
      res!.write(body.subarray(sent, to));
      sent = to;
    },
    end() {
      res!.end(body.subarray(sent));
    },
    cut() {
      res!.destroy();
    },
  };
}

async function setup(body: Buffer, idleTimeoutMs = 30_000) {
  const { dir, cleanup } = await tempDir('dfnode-seed-cut-');
  cleanups.push(cleanup);
  const origin = await feedOrigin(body);
  const cache = new CacheManager({ dir, highWatermark: 1e12, lowWatermark: 1e12 });
  await cache.init();
  cleanups.push(() => cache.close());
  const files = new SeedFiles({ cache, origins: ['*'], idleTimeoutMs });
  await files.init();
  cleanups.push(() => files.close());
  const signal = new AbortController().signal;
  const url = `${origin.base}/f`;
  const table = async (digest: string) =>
    decodeTable(await files.table(new URLSearchParams({ url, digest }), signal), digest);
  /** The temporary files left once the fetch has cleaned up (it does after failing its readers). */
  const tmpFiles = async () => {
    for (let i = 0; i < 200 && (await readdir(join(dir, 'files-tmp'))).length; i++)
      await new Promise((r) => setTimeout(r, 10));
    return readdir(join(dir, 'files-tmp'));
  };
  return { origin, files, signal, table, tmpFiles };
}

/** Whether `p` has settled by the time the event loop turned a few times (it is meant to be waiting). */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
  return done;
}

/** Byte equality without vitest's element-by-element diff (slow on MiBs). */
const same = (a: Buffer | readonly Promise<Buffer>[] | undefined, b: Buffer) =>
  Buffer.isBuffer(a) && a.equals(b);

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('seed files, cut-through', () => {
  it('answers the table when the origin answers and serves each piece as it arrives, the last once the file matched', async () => {
    const data = randomBytes(2 * P + 1000);
    const digest = sha256Digest(data);
    const t = await setup(data);
    // before any byte of the body: the size, no piece yet
    const first = await t.table(digest);
    expect(first).toMatchObject({ digest, size: data.length, pieceSize: P, filling: true, pieces: [] });
    // the seed's bitmap for its tracker (bit u = piece u): nothing readable yet
    expect([...t.files.bits(digest)!]).toEqual([0b000]);
    expect(t.files.bits(sha256Digest(Buffer.from('other')))).toBeUndefined();
    const served = t.files.served(digest)!;
    expect(served.size).toBe(data.length);
    const piece1 = served.read(P, P, t.signal);
    const last = served.read(2 * P, 1000, t.signal);
    t.origin.send(P + 10);
    expect(same(await served.read(0, P, t.signal), data.subarray(0, P))).toBe(true);
    expect(served.pieceDigest!(0, P)).toBe(sha(data.subarray(0, P)));
    expect(await settled(piece1)).toBe(false);
    t.origin.send(2 * P + 999);
    expect(same(await piece1, data.subarray(P, 2 * P))).toBe(true);
    expect([...t.files.bits(digest)!]).toEqual([0b011]);
    expect((await t.table(digest)).pieces.map((p) => p.toString('hex'))).toEqual([
      sha(data.subarray(0, P)),
      sha(data.subarray(P, 2 * P)),
    ]);
    // every byte but one is in: the last piece still waits for the whole file's digest
    expect(await settled(last)).toBe(false);
    t.origin.end();
    expect(same(await last, data.subarray(2 * P))).toBe(true);
    // then held in the cache: the complete table, from the one fetch
    let table = await t.table(digest);
    while (table.filling) {
      await new Promise((r) => setTimeout(r, 20));
      table = await t.table(digest);
    }
    expect(table.pieces).toHaveLength(3);
    expect([...t.files.bits(digest)!]).toEqual([0b111]);
    expect(t.origin.gets()).toBe(1);
    expect(await t.tmpFiles()).toEqual([]);
    expect(same(await t.files.served(digest)!.read(P, P, t.signal), data.subarray(P, 2 * P))).toBe(true);
  });

  it('an origin that lies mid-stream: waiting reads fail with the mismatch, the seed answers it without fetching again', async () => {
    const data = randomBytes(2 * P + 1000);
    const lie = Buffer.from(data);
    lie[P + 5]! ^= 1;
    const digest = sha256Digest(data);
    const t = await setup(lie);
    await t.table(digest);
    const served = t.files.served(digest)!;
    const waiting = served.read(2 * P, 1000, t.signal);
    t.origin.end();
    await expect(waiting).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
    await expect(
      t.files.table(new URLSearchParams({ url: `${t.origin.base}/f`, digest }), t.signal),
    ).rejects.toMatchObject({ code: 'DIGEST_MISMATCH' });
    await expect(t.files.served(digest)!.read(0, P, t.signal)).rejects.toMatchObject({
      code: 'DIGEST_MISMATCH',
    });
    expect(t.origin.gets()).toBe(1);
    expect(await t.tmpFiles()).toEqual([]);
  });

  it('a piece that never arrives: its reader aborts, or the origin goes away and the read fails; nothing is left', async () => {
    const data = randomBytes(2 * P + 1000);
    const digest = sha256Digest(data);
    const t = await setup(data);
    await t.table(digest);
    const served = t.files.served(digest)!;
    t.origin.send(P);
    expect(same(await served.read(0, P, t.signal), data.subarray(0, P))).toBe(true);
    const ac = new AbortController();
    const aborted = served.read(P, P, ac.signal);
    const other = served.read(P, P, t.signal);
    ac.abort(new Error('node went away'));
    await expect(aborted).rejects.toThrow(/node went away/);
    expect(await settled(other)).toBe(false);
    t.origin.cut();
    // not the seed's fault and not final: the node asks again (and its next table starts a new fetch)
    await expect(other).rejects.toThrow(/fetch of the file failed/);
    expect(await t.tmpFiles()).toEqual([]);
    expect(t.files.served(digest)).toBeUndefined();
    const again = t.table(digest);
    await t.origin.started;
    expect((await again).filling).toBe(true);
    expect(t.origin.gets()).toBe(2);
  });

  it('an origin that stalls fails waiting reads after the idle limit', async () => {
    const data = randomBytes(P + 1000);
    const digest = sha256Digest(data);
    const t = await setup(data, 300);
    await t.table(digest);
    t.origin.send(1000);
    await expect(t.files.served(digest)!.read(0, P, t.signal)).rejects.toThrow(/sent nothing for 300 ms/);
    expect(await t.tmpFiles()).toEqual([]);
  });
});
