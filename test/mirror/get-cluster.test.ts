/**
 * `dfnode get` through a real cluster on loopback: a counting HTTP origin, a `dfnode seed` process and
 * `dfnode get` processes. N nodes at once cost the origin about one copy; a get killed with SIGKILL
 * mid-transfer resumes from the pieces it had verified; without a seed that may fetch the origin, the file
 * comes directly from it; an origin that needs credentials is fetched by the seed with the nodes' headers,
 * and the file it holds is not given to a node the origin refuses.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import { dfnodeProc, startSeedProc, type SeedProc } from '../helpers/dfnode-proc.js';
import { sha256Digest, sha256File } from '../helpers/digest.js';
import { getNodeFlags, startFileOrigin, type FileOrigin } from '../helpers/file-origin.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const TOKEN = 'get-cluster-token';
const MiB = 1024 * 1024;

const cleanups = cleanupsAfterEach();

async function setup(
  size: number,
  seedOrigins?: (o: FileOrigin) => string,
  auth?: string | string[],
  chunkDelayMs?: number,
) {
  const { dir, cleanup } = await tempDir('dfnode-get-');
  cleanups.push(cleanup);
  const origin = await startFileOrigin({ auth, chunkDelayMs });
  cleanups.push(() => origin.close());
  const data = randomBytes(size);
  origin.put('/files/big.bin', data);
  let seed: SeedProc | undefined;
  if (seedOrigins) {
    seed = await startSeedProc(dir, 'seed', ['--cluster-token', TOKEN], {
      DFNODE_P2P_SEED_ORIGINS: seedOrigins(origin),
    });
    cleanups.push(() => seed!.proc.stop());
  }
  const url = `${origin.base}/files/big.bin`;
  const args = (i: number, extra: string[] = []) => [
    'get',
    url,
    '-O',
    join(dir, `out-${i}.bin`),
    ...getNodeFlags(dir, `-${i}`, TOKEN, seed?.addr),
    ...extra,
  ];
  return { dir, origin, data, digest: sha256Digest(data), url, seed, args };
}

interface Result {
  digest: string;
  size: number;
  mode: string;
  reason?: string;
  bytes: Record<string, number>;
}

function parse(stdout: string): Result {
  return JSON.parse(stdout.trim().split('\n').pop()!) as Result;
}

describe('dfnode get', () => {
  it('gets a 100 MiB file to 3 nodes at once: the origin serves it about once, every copy verifies', async () => {
    const size = 100 * MiB;
    const t = await setup(size, (o) => o.base + '/files/');
    const runs = await Promise.all(
      [0, 1, 2].map((i) => runCli('dfnode', t.args(i, ['--digest', t.digest]), { timeoutMs: 300_000 })),
    );
    for (const [i, r] of runs.entries()) {
      expect(r.code, r.stderr).toBe(0);
      const res = parse(r.stdout);
      expect(res).toMatchObject({ digest: t.digest, size, mode: 'p2p' });
      const b = res.bytes;
      expect((b.peer ?? 0) + (b.seed ?? 0) + (b.registry ?? 0)).toBe(size);
      expect('sha256:' + (await sha256File(join(t.dir, `out-${i}.bin`)))).toBe(t.digest);
      expect(existsSync(join(t.dir, `out-${i}.bin.dfnode-tmp`))).toBe(false);
    }
    console.info(
      `dfnode get 100 MiB x3: origin served ${t.origin.served()} bytes; by source`,
      runs.map((r) => parse(r.stdout).bytes),
    );
    // the seed fetched the file once; no node went to the origin
    expect(t.origin.served()).toBeLessThanOrEqual(1.1 * size);
    expect(t.origin.requests.range).toBe(0);
  }, 400_000);

  it('resumes after kill -9 mid-transfer: the rerun fetches only the missing pieces, the file verifies', async () => {
    const size = 64 * MiB;
    const t = await setup(size, (o) => o.base);
    const out = join(t.dir, 'out-0.bin');
    const bitmap = join(t.dir, 'cache-0', 'blobs', 'sha256', t.digest.slice(7), 'bitmap');
    // a slow node (8 MiB/s) so that it is killed with part of the file in its cache
    const p = dfnodeProc(t.args(0), { DFNODE_P2P_DOWNLOAD_RATE: '8M' });
    cleanups.push(() => p.stop());
    for (let i = 0; i < 1200 && !existsSync(bitmap); i++) {
      if (p.child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(existsSync(bitmap), p.err()).toBe(true);
    p.child.kill('SIGKILL');
    await p.exited;
    expect(existsSync(out)).toBe(false);
    const r = await runCli('dfnode', t.args(0), { timeoutMs: 300_000 });
    expect(r.code, r.stderr).toBe(0);
    const res = parse(r.stdout);
    expect(res.digest).toBe(t.digest);
    expect(res.bytes.cache ?? 0).toBeGreaterThan(0);
    expect(
      (res.bytes.cache ?? 0) + (res.bytes.seed ?? 0) + (res.bytes.peer ?? 0) + (res.bytes.registry ?? 0),
    ).toBe(size);
    expect(res.bytes.seed ?? 0).toBeLessThan(size);
    expect('sha256:' + (await sha256File(out))).toBe(t.digest);
    expect(t.origin.served()).toBeLessThanOrEqual(1.1 * size);
  }, 400_000);

  it("an origin that needs credentials: the seed fetches it with the nodes' --header once; nodes without them get nothing from it", async () => {
    const size = 3 * MiB + 17;
    const auth = 'Bearer s3cret';
    const t = await setup(size, (o) => o.base, auth);
    // without credentials: the seed is refused by the origin, and so is the node
    const no = await runCli('dfnode', t.args(0), { timeoutMs: 120_000 });
    expect(no.code, no.stderr).toBe(4);
    expect(no.stderr).toMatch(/401.*--header 'Authorization/);
    // with them: the seed fetches the file with the node's headers, the node takes it in pieces
    const withAuth = (i: number, extra: string[] = []) =>
      runCli('dfnode', t.args(i, ['--header', `Authorization: ${auth}`, ...extra]), { timeoutMs: 120_000 });
    const one = await withAuth(1, ['--digest', t.digest]);
    expect(one.code, one.stderr).toBe(0);
    expect(parse(one.stdout)).toMatchObject({ digest: t.digest, mode: 'p2p', bytes: { seed: size } });
    const two = await withAuth(2);
    expect(two.code, two.stderr).toBe(0);
    expect(parse(two.stdout)).toMatchObject({ digest: t.digest, mode: 'p2p' });
    for (const i of [1, 2])
      expect('sha256:' + (await sha256File(join(t.dir, `out-${i}.bin`)))).toBe(t.digest);
    // the origin sent the file once (to the seed), besides HEADs
    expect(t.origin.served()).toBeLessThanOrEqual(1.1 * size);
    // the seed holds the file, fetched with those credentials: a node with other ones, or none, is refused
    // by the seed (the origin refuses their HEAD), then by the origin; no bytes reach it
    for (const [i, extra] of [
      [3, ['--header', 'Authorization: Bearer nope', '--digest', t.digest]],
      [4, ['--digest', t.digest]],
    ] as const) {
      const refusedBefore = t.origin.requests.refused;
      const r = await runCli('dfnode', t.args(i, [...extra]), { timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(4);
      expect(t.origin.requests.refused).toBeGreaterThanOrEqual(refusedBefore + 2);
      expect(existsSync(join(t.dir, `out-${i}.bin`))).toBe(false);
    }
    expect(t.origin.served()).toBeLessThanOrEqual(1.1 * size);
  }, 200_000);

  it('nodes with different credentials at once: the seed fetches the file once, after the origin let each read it', async () => {
    const size = 3 * MiB + 5;
    // a slow origin: the second node asks while the seed still fetches for the first
    const t = await setup(size, (o) => o.base, ['Bearer alice', 'Bearer bob'], 1);
    const get = (i: number, who: string) =>
      runCli('dfnode', t.args(i, ['--header', `Authorization: Bearer ${who}`, '--digest', t.digest]), {
        timeoutMs: 120_000,
      });
    const [a, b] = await Promise.all([get(1, 'alice'), get(2, 'bob')]);
    for (const [i, r] of [[1, a] as const, [2, b] as const]) {
      expect(r.code, r.stderr).toBe(0);
      expect(parse(r.stdout)).toMatchObject({ digest: t.digest, mode: 'p2p' });
      expect('sha256:' + (await sha256File(join(t.dir, `out-${i}.bin`)))).toBe(t.digest);
    }
    // one GET of the file (besides the access checks' HEADs), where each credential used to fetch its own
    expect(t.origin.requests.get).toBe(1);
    expect(t.origin.served()).toBeLessThanOrEqual(1.1 * size);
    // a third credential the origin refuses gets nothing from the fetch it would have joined
    const refused = await get(3, 'mallory');
    expect(refused.code, refused.stderr).toBe(4);
    expect(existsSync(join(t.dir, 'out-3.bin'))).toBe(false);
  }, 200_000);

  it('a seed refuses an origin p2p.seedOrigins does not list, without contacting it; the node gets the file directly', async () => {
    const size = 2 * MiB + 5;
    const t = await setup(size, () => 'http://127.0.0.1:1/elsewhere/');
    const r = await runCli('dfnode', t.args(0), { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    const res = parse(r.stdout);
    expect(res).toMatchObject({ digest: t.digest, mode: 'direct', bytes: { registry: size } });
    expect(res.reason).toMatch(/p2p\.seedOrigins/);
    // one request: the node's own
    expect(t.origin.requests).toMatchObject({ get: 1, range: 0, head: 0, refused: 0 });
    expect('sha256:' + (await sha256File(join(t.dir, 'out-0.bin')))).toBe(t.digest);
  }, 200_000);

  it('without a seed, resumes a direct download from the part file a killed get left', async () => {
    const size = 64 * MiB;
    // a slow origin (a pause every 64 KiB), so that the get is killed mid-transfer
    const t = await setup(size, undefined, undefined, 2);
    const out = join(t.dir, 'out-0.bin');
    const part = `${out}.dfnode-part`;
    const p = dfnodeProc(t.args(0));
    cleanups.push(() => p.stop());
    for (let i = 0; i < 1200; i++) {
      const n = await stat(part).then(
        (s) => s.size,
        () => 0,
      );
      if (n > 0 || p.child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    p.child.kill('SIGKILL');
    await p.exited;
    expect(existsSync(out)).toBe(false);
    const had = await stat(part).then(
      (s) => s.size,
      () => 0,
    );
    expect(had).toBeGreaterThan(0);
    expect(had).toBeLessThan(size);
    const r = await runCli('dfnode', t.args(0, ['--digest', t.digest]), { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    const res = parse(r.stdout);
    expect(res).toMatchObject({ digest: t.digest, mode: 'direct' });
    expect(res.reason).toMatch(/no seed/);
    // the rerun asked the origin for the rest only (from the last byte held)
    expect(res.bytes.registry).toBe(size - Math.max(0, had - 1));
    expect('sha256:' + (await sha256File(out))).toBe(t.digest);
    expect(existsSync(part)).toBe(false);
  }, 200_000);

  it('with --digest, pieces reach the node while the seed is still fetching the file from a slow origin (cut-through)', async () => {
    const size = 32 * MiB;
    // 64 KiB per 10 ms at most: the origin takes several seconds to send the file
    const t = await setup(size, (o) => o.base, undefined, 10);
    const bitmap = join(t.dir, 'cache-0', 'blobs', 'sha256', t.digest.slice(7), 'bitmap');
    const p = dfnodeProc(t.args(0, ['--digest', t.digest]));
    cleanups.push(() => p.stop());
    // the node's first verified pieces are on its disk before the origin has sent the whole file
    for (let i = 0; i < 3000 && !existsSync(bitmap) && p.child.exitCode === null; i++)
      await new Promise((r) => setTimeout(r, 10));
    const sentWhenNodeHadPieces = t.origin.served();
    expect(existsSync(bitmap), p.err()).toBe(true);
    expect(sentWhenNodeHadPieces).toBeLessThan(size);
    expect(await p.exited).toBe(0);
    expect('sha256:' + (await sha256File(join(t.dir, 'out-0.bin')))).toBe(t.digest);
    expect(t.origin.requests).toMatchObject({ get: 1, range: 0 });
  }, 200_000);

  it('a wrong --digest fails with a digest mismatch and writes no file', async () => {
    const t = await setup(MiB, (o) => o.base);
    const wrong = sha256Digest('something else');
    const r = await runCli('dfnode', t.args(0, ['--digest', wrong]), { timeoutMs: 120_000 });
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/digest/i);
    expect(existsSync(join(t.dir, 'out-0.bin'))).toBe(false);
  }, 200_000);
});
