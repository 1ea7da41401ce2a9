/**
 * The mirror of `dfnode seed` (`mirror.listen` on a seed) as a pull-through cache for hosts without dfnode:
 * a real `dfnode seed` process and docker-registry on loopback. A blob is fetched from the registry once,
 * then answered from the seed's files (Range too), after an access check with the engine's credentials;
 * with the registry stopped, an engine allowed a moment ago still gets it, and its manifest.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryClient } from '../../src/registry/client.js';
import { parseReference } from '../../src/registry/reference.js';
import { startSeedProc, type SeedProc } from '../helpers/dfnode-proc.js';
import { sha256Digest } from '../helpers/digest.js';
import { waitFor } from '../helpers/node.js';
import { httpAnswer as get } from '../helpers/raw-http.js';
import { freePort, requireRegistry, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/temp.js';
import { ociManifest } from '../helpers/registry-client.js';

const req = requireRegistry();

describe.skipIf(req.skip)(`the seed's own mirror ${req.reason}`, () => {
  let reg: TestRegistry;
  let seed: SeedProc;
  let mirror: string;
  let cleanup: () => Promise<void>;
  const data = randomBytes(3 * 1024 * 1024 + 999);
  const digest = sha256Digest(data);
  const manifest = ociManifest({ digest, size: data.length });
  const accept = 'application/vnd.oci.image.manifest.v1+json';

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = await tempDir('dfnode-seed-mirror-'));
    reg = await startRegistry();
    const c = new RegistryClient({ plainHttp: true });
    await c.pushBlob(parseReference(`${reg.host}/app`), digest, data.length, () => Readable.from([data]));
    await c.putManifest(parseReference(`${reg.host}/app:v1`), manifest, accept);
    await c.close();
    mirror = `127.0.0.1:${await freePort()}`;
    seed = await startSeedProc(dir, 'seed', ['--cluster-token', 'seed-mirror-token'], {
      DFNODE_MIRROR_LISTEN: mirror,
    });
  }, 60_000);
  afterAll(async () => {
    await seed?.proc.stop();
    await reg?.stop();
    await cleanup?.();
  });

  const blobGets = () =>
    reg.requests().filter((r) => r.method === 'GET' && r.path.startsWith(`/v2/app/blobs/${digest}`)).length;

  it('fetches a blob from the registry once and answers it from its files, Range too', async () => {
    const path = `/v2/app/blobs/${digest}?ns=${reg.host}`;
    for (let i = 0; i < 3; i++) {
      const r = await get(mirror, path);
      expect(r.status).toBe(200);
      expect(r.complete).toBe(true);
      expect(sha256Digest(r.body)).toBe(digest);
    }
    const part = await get(mirror, path, { range: 'bytes=1048570-2097160' });
    expect(part.status).toBe(206);
    expect(part.body.equals(data.subarray(1048570, 2097161))).toBe(true);
    // the access log is read as it is written
    await waitFor('the seed’s blob GET in the access log', () => Promise.resolve(blobGets() >= 1), 10_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(blobGets()).toBe(1);
  }, 60_000);

  it('with the registry stopped, answers an engine allowed a moment ago, manifest and blob', async () => {
    const m = await get(mirror, `/v2/app/manifests/v1?ns=${reg.host}`, { accept });
    expect(m.status).toBe(200);
    await reg.stop();
    const stale = await get(mirror, `/v2/app/manifests/v1?ns=${reg.host}`, { accept });
    expect(stale.status).toBe(200);
    expect(stale.body.equals(manifest)).toBe(true);
    const r = await get(mirror, `/v2/app/blobs/${digest}?ns=${reg.host}`);
    expect(r.status).toBe(200);
    expect(sha256Digest(r.body)).toBe(digest);
  }, 60_000);
});
