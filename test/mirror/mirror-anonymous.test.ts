/**
 * Engines that pull without credentials from a registry with token auth (Docker Hub's public images): the
 * mirror meets the registry's challenge with an anonymous token, so the engine stays anonymous and every node
 * shares one manifest and one access; a repository that anonymous tokens do not open gets the registry's own
 * challenge. Loopback: a bearer-token docker-registry that lets anonymous pulls read `public/app` only, a real
 * `dfnode seed` process, mirrors in this process on their own cache and P2P node.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryClient } from '../../src/registry/client.js';
import { StaticCredentials } from '../../src/registry/credentials.js';
import { parseReference } from '../../src/registry/reference.js';
import { startSeedProc, type SeedProc } from '../helpers/dfnode-proc.js';
import { sha256Digest } from '../helpers/digest.js';
import { httpAnswer as get } from '../helpers/raw-http.js';
import { engineToken, requireRegistry, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/temp.js';
import { startMirrorNode, type MirrorNode } from '../helpers/mirror-node.js';
import { ociManifest } from '../helpers/registry-client.js';

const TOKEN = 'mirror-anonymous-token';
const ACCEPT = 'application/vnd.oci.image.manifest.v1+json';
const req = requireRegistry(['bearer']);

describe.skipIf(req.skip)(`registry mirror: engines without credentials ${req.reason}`, () => {
  let dir: string;
  let cleanupDir: () => Promise<void>;
  let reg: TestRegistry;
  let seed: SeedProc;
  const stops: (() => Promise<unknown>)[] = [];
  const layer = randomBytes(2 * (1 << 20) + 4321);
  const layerDigest = sha256Digest(layer);
  const config = Buffer.from('{"architecture":"amd64","os":"linux"}');
  const configDigest = sha256Digest(config);
  const manifest = ociManifest({ digest: configDigest, size: config.length }, [
    { digest: layerDigest, size: layer.length },
  ]);
  let a: MirrorNode;
  let b: MirrorNode;
  const manifestPath = (repo: string) => `/v2/${repo}/manifests/v1?ns=${reg.host}`;
  const blobPath = (repo: string) => `/v2/${repo}/blobs/${layerDigest}?ns=${reg.host}`;
  /** Manifest GETs the registry answered 200 (an anonymous token's first try is a 401 first). */
  const manifestGets = (repo: string) =>
    reg
      .requests()
      .filter((r) => r.method === 'GET' && r.status === 200 && r.path.startsWith(`/v2/${repo}/manifests/`))
      .length;

  beforeAll(async () => {
    ({ dir, cleanup: cleanupDir } = await tempDir('dfnode-mirror-anon-'));
    reg = await startRegistry({
      auth: 'bearer',
      username: 'alice',
      password: 'secret',
      anonymousPull: ['public/app'],
    });
    const c = new RegistryClient({
      plainHttp: true,
      credentials: StaticCredentials.fromString('alice:secret'),
    });
    for (const repo of ['public/app', 'private/app']) {
      const ref = parseReference(`${reg.host}/${repo}:v1`);
      await c.pushBlob(ref, configDigest, config.length, () => Readable.from([config]));
      await c.pushBlob(ref, layerDigest, layer.length, () => Readable.from([layer]));
      await c.putManifest(ref, manifest, ACCEPT);
    }
    await c.close();
    seed = await startSeedProc(dir, 'seed', ['--cluster-token', TOKEN, '--creds', 'alice:secret']);
    stops.push(() => seed.proc.stop());
    a = await startMirrorNode(dir, 'a', seed.addr, TOKEN, { manifestTtlMs: 60_000 });
    stops.push(() => a.stop());
    b = await startMirrorNode(dir, 'b', seed.addr, TOKEN, { manifestTtlMs: 60_000 });
    stops.push(() => b.stop());
  }, 120_000);

  afterAll(async () => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    await reg?.stop();
    await cleanupDir?.();
  }, 60_000);

  it('answers a public image to engines without credentials: no challenge, one manifest GET for two nodes', async () => {
    const answers = await Promise.all(
      [a, b].map((n) => get(n.mirror.address, manifestPath('public/app'), { accept: ACCEPT })),
    );
    for (const r of answers) {
      expect(r.status).toBe(200);
      expect(r.body.equals(manifest)).toBe(true);
    }
    // both through the seed, which fetched it once with an anonymous token of its own
    expect(a.mirror.counters.seedManifests + b.mirror.counters.seedManifests).toBe(2);
    // containerd resolves a tag with HEAD, then GETs the manifest by digest: no second registry GET (Docker
    // Hub counts each one against the pull rate limit)
    for (const n of [a, b]) {
      const head = await get(n.mirror.address, manifestPath('public/app'), { accept: ACCEPT }, 'HEAD');
      expect(head.status).toBe(200);
      const byDigest = `/v2/public/app/manifests/${String(head.headers['docker-content-digest'])}?ns=${reg.host}`;
      const m = await get(n.mirror.address, byDigest, { accept: `${ACCEPT}, */*` });
      expect(m.status).toBe(200);
      expect(m.body.equals(manifest)).toBe(true);
    }
    await new Promise((r) => setTimeout(r, 500));
    expect(manifestGets('public/app')).toBe(1);
    // the blob through the seed: the manifest answered without credentials was the access check
    const blob = await get(a.mirror.address, blobPath('public/app'));
    expect(blob.status).toBe(200);
    expect(blob.complete).toBe(true);
    expect(sha256Digest(blob.body)).toBe(layerDigest);
    expect(a.mirror.counters.blobSources).toMatchObject({ cluster: 1 });
    expect(a.mirror.counters.accessChecks).toBe(0);
    // a HEAD is the registry's answer: the node meets its challenge with an anonymous token of its own...
    const anon = a.mirror.upstream.anonymous!;
    expect(anon.counters.fetched).toBe(0);
    const head = await get(a.mirror.address, blobPath('public/app'), {}, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(layer.length));
    expect(anon.counters.fetched).toBe(1);
    // ... which it holds: the next request sends it up front (no token request, no 401 round trip)
    const unauthorized = () => reg.requests().filter((r) => r.status === 401).length;
    await new Promise((r) => setTimeout(r, 300));
    const refusals = unauthorized();
    expect((await get(a.mirror.address, blobPath('public/app'), {}, 'HEAD')).status).toBe(200);
    await new Promise((r) => setTimeout(r, 300));
    expect(anon.counters.fetched).toBe(1);
    expect(unauthorized()).toBe(refusals);
  }, 60_000);

  it('gives an engine with its own token for a public repository the copy fetched without credentials', async () => {
    const own = await engineToken(reg, 'public/app');
    const before = manifestGets('public/app');
    const r = await get(b.mirror.address, manifestPath('public/app'), { authorization: own, accept: ACCEPT });
    expect(r.status).toBe(200);
    expect(r.body.equals(manifest)).toBe(true);
    await new Promise((r) => setTimeout(r, 300));
    expect(manifestGets('public/app')).toBe(before);
  }, 30_000);

  it('relays the registry challenge for a repository anonymous tokens do not open, asking once', async () => {
    const r = await get(a.mirror.address, manifestPath('private/app'), { accept: ACCEPT });
    expect(r.status).toBe(401);
    expect(String(r.headers['www-authenticate'])).toMatch(/^Bearer realm=/);
    const blob = await get(a.mirror.address, blobPath('private/app'));
    expect(blob.status).toBe(401);
    expect(blob.body.includes(layer.subarray(0, 64))).toBe(false);
    // the refusal is remembered: asked again, the node sends no second token request for that scope
    const anon = a.mirror.upstream.anonymous!;
    const fetched = anon.counters.fetched;
    expect((await get(a.mirror.address, blobPath('private/app'))).status).toBe(401);
    expect(anon.counters.fetched).toBe(fetched);
    // with the engine's own credentials it is the usual pull
    const own = await engineToken(reg, 'private/app');
    const ok = await get(a.mirror.address, manifestPath('private/app'), {
      authorization: own,
      accept: ACCEPT,
    });
    expect(ok.status).toBe(200);
  }, 60_000);

  it('registry down: a node that never pulled serves the public image to any engine, nothing private', async () => {
    await reg.stop();
    const c = await startMirrorNode(dir, 'c', seed.addr, TOKEN, { manifestTtlMs: 60_000 });
    stops.push(() => c.stop());
    // a token this cluster never saw (each engine's own, as Docker Hub hands them out)
    const stranger = 'Bearer never-seen-before';
    const m = await get(c.mirror.address, manifestPath('public/app'), {
      authorization: stranger,
      accept: ACCEPT,
    });
    expect(m.status).toBe(200);
    expect(m.body.equals(manifest)).toBe(true);
    const blob = await get(c.mirror.address, blobPath('public/app'), { authorization: stranger });
    expect(blob.status).toBe(200);
    expect(blob.complete).toBe(true);
    expect(sha256Digest(blob.body)).toBe(layerDigest);
    // and without credentials
    expect((await get(c.mirror.address, manifestPath('public/app'), { accept: ACCEPT })).status).toBe(200);
    // the private repository: the seed keeps alice's copy, which no other credential gets
    const priv = await get(c.mirror.address, manifestPath('private/app'), {
      authorization: stranger,
      accept: ACCEPT,
    });
    expect(priv.status).toBe(502);
    expect((await get(c.mirror.address, blobPath('private/app'), { authorization: stranger })).status).toBe(
      502,
    );
    expect((await get(c.mirror.address, manifestPath('private/app'), { accept: ACCEPT })).status).toBe(502);
  }, 120_000);
});
