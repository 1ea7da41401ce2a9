/**
 * `dfnode get REGISTRY/REPO@DIGEST`: a blob of a real registry (docker-registry) to two `dfnode get`
 * processes through a `dfnode seed`: the registry serves the blob once (to the seed), both copies verify.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { RegistryClient } from '../../src/registry/client.js';
import { parseReference } from '../../src/registry/reference.js';
import { runCli } from '../helpers/cli.js';
import { startSeedProc } from '../helpers/dfnode-proc.js';
import { sha256Digest, sha256File } from '../helpers/digest.js';
import { getNodeFlags } from '../helpers/file-origin.js';
import { requireRegistry, startRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const TOKEN = 'get-registry-token';
const req = requireRegistry();
const cleanups = cleanupsAfterEach();

describe.skipIf(req.skip)(`dfnode get from a registry ${req.reason}`, () => {
  it('gets a registry blob to two nodes through the seed: the registry serves it once', async () => {
    const { dir, cleanup } = await tempDir('dfnode-get-reg-');
    cleanups.push(cleanup);
    const reg = await startRegistry();
    cleanups.push(() => reg.stop());
    const data = randomBytes(24 * 1024 * 1024 + 3);
    const digest = sha256Digest(data);
    const ref = parseReference(`${reg.host}/files/blob`);
    const c = new RegistryClient({ plainHttp: true });
    await c.pushBlob(ref, digest, data.length, () => Readable.from([data]));
    await c.close();
    const seed = await startSeedProc(dir, 'seed', ['--cluster-token', TOKEN]);
    cleanups.push(() => seed.proc.stop());
    const blobPath = `/v2/files/blob/blobs/${digest}`;
    const before = reg.requests().filter((r) => r.method === 'GET' && r.path === blobPath).length;
    const runs = await Promise.all(
      [0, 1].map((i) =>
        runCli(
          'dfnode',
          [
            'get',
            `${ref.repoString}@${digest}`,
            '-O',
            join(dir, `out-${i}`),
            '--plain-http',
            ...getNodeFlags(dir, `-${i}`, TOKEN, seed.addr),
          ],
          { timeoutMs: 300_000 },
        ),
      ),
    );
    for (const [i, r] of runs.entries()) {
      expect(r.code, r.stderr).toBe(0);
      const res = JSON.parse(r.stdout.trim()) as {
        mode: string;
        digest: string;
        bytes: Record<string, number>;
      };
      expect(res).toMatchObject({ mode: 'p2p', digest });
      expect(res.bytes.registry ?? 0).toBe(0);
      expect('sha256:' + (await sha256File(join(dir, `out-${i}`)))).toBe(digest);
    }
    // the access log is read asynchronously: wait for the seed's GET to show up
    let gets = 0;
    for (let i = 0; i < 100; i++) {
      gets = reg.requests().filter((r) => r.method === 'GET' && r.path === blobPath).length - before;
      if (gets >= 1) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(gets).toBe(1);
  }, 400_000);
});
