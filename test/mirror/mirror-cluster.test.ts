/**
 * The registry mirror on a node's cache and P2P tier (loopback: a bearer-token docker-registry, a real
 * `dfnode seed` process, mirrors in this process on their own P2pNode and CacheManager, as the fuse manager
 * runs them). Blobs go through the seed in verified pieces after an access check with the engine's own
 * token; a request without access never gets a blob the cluster holds; a registry outage does not stop an
 * engine that was allowed recently; a peer serving corrupt pieces is isolated and the blob still verifies.
 */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MirrorServer } from '../../src/mirror/mirror-server.js';
import { PieceHasher, PieceLayout, pieceSizeFor, PIECE_SIZE } from '../../src/mirror/piece-table.js';
import { RegistryClient } from '../../src/registry/client.js';
import { StaticCredentials } from '../../src/registry/credentials.js';
import { parseReference } from '../../src/registry/reference.js';
import { startSeedProc, type SeedProc } from '../helpers/dfnode-proc.js';
import { sha256Digest } from '../helpers/digest.js';
import { startLyingPiecePeer } from '../helpers/lying-piece-peer.js';
import { engineToken, requireRegistry, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { halfHeldUnderOldPieces, OLD_PIECE } from '../helpers/piece-file.js';
import { tempDir } from '../helpers/temp.js';
import { startMirrorNode, type MirrorNode } from '../helpers/mirror-node.js';
import { httpAnswer as get } from '../helpers/raw-http.js';
import { waitFor } from '../helpers/node.js';
import { ociManifest } from '../helpers/registry-client.js';

const TOKEN = 'mirror-cluster-token';
const req = requireRegistry(['bearer']);

describe.skipIf(req.skip)(`registry mirror blobs through the cluster ${req.reason}`, () => {
  let dir: string;
  let cleanupDir: () => Promise<void>;
  let reg: TestRegistry;
  let seed: SeedProc;
  const stops: (() => Promise<unknown>)[] = [];
  const data = randomBytes(3 * PIECE_SIZE + 12345);
  const digest = sha256Digest(data);
  const other = randomBytes(1 << 20);
  /** 16 pieces: enough that the tracker names the liar before the last ones are asked for. */
  const big = randomBytes(16 * PIECE_SIZE);
  const bigDigest = sha256Digest(big);
  const otherDigest = sha256Digest(other);
  /** Blobs a node's cache holds in part under a layout other than the table's (below). */
  const relaid = [randomBytes(3 * 1024 * 1024 + 5), randomBytes(3 * 1024 * 1024 + 7)];
  const bigManifest = ociManifest({ digest, size: data.length }, [{ digest: bigDigest, size: big.length }]);
  let node: MirrorNode;
  let mirror: MirrorServer;
  let auth: string;
  const blobPath = `/v2/private/app/blobs/${digest}?ns=`;

  beforeAll(async () => {
    ({ dir, cleanup: cleanupDir } = await tempDir('dfnode-mirror-cluster-'));
    reg = await startRegistry({ auth: 'bearer', username: 'alice', password: 'secret' });
    const c = new RegistryClient({
      plainHttp: true,
      credentials: StaticCredentials.fromString('alice:secret'),
    });
    await c.pushBlob(parseReference(`${reg.host}/private/app`), digest, data.length, () =>
      Readable.from([data]),
    );
    await c.pushBlob(parseReference(`${reg.host}/private/app`), bigDigest, big.length, () =>
      Readable.from([big]),
    );
    await c.pushBlob(parseReference(`${reg.host}/private/other`), otherDigest, other.length, () =>
      Readable.from([other]),
    );
    for (const b of relaid)
      await c.pushBlob(parseReference(`${reg.host}/private/app`), sha256Digest(b), b.length, () =>
        Readable.from([b]),
      );
    // a manifest naming the big blob (its config: the small one), so that a pull starts as an engine's does
    await c.putManifest(
      parseReference(`${reg.host}/private/app:big`),
      bigManifest,
      'application/vnd.oci.image.manifest.v1+json',
    );
    await c.close();
    // the seed reads the registry with its own credentials
    seed = await startSeedProc(dir, 'seed', ['--cluster-token', TOKEN, '--creds', 'alice:secret']);
    stops.push(() => seed.proc.stop());
    node = await startMirrorNode(dir, 'a', seed.addr, TOKEN);
    stops.push(() => node.stop());
    mirror = node.mirror;
    auth = await engineToken(reg, 'private/app');
  }, 120_000);

  afterAll(async () => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    await reg?.stop();
    await cleanupDir?.();
  }, 60_000);

  it('answers a credentialed blob GET in verified pieces through the seed; a Range from the pieces', async () => {
    const r = await get(mirror.address, blobPath + reg.host, { authorization: auth });
    expect(r.status).toBe(200);
    expect(r.complete).toBe(true);
    expect(sha256Digest(r.body)).toBe(digest);
    expect(mirror.counters.blobSources).toMatchObject({ cluster: 1 });
    expect(mirror.counters.clusterFallbacks).toBe(0);
    expect(mirror.pieceBytes.seed).toBe(data.length);
    expect(mirror.pieceBytes.registry ?? 0).toBe(0);
    expect(mirror.counters.accessChecks).toBe(1);
    // a resumed download: containerd asks for the rest with Range
    const from = PIECE_SIZE + 7;
    const part = await get(mirror.address, blobPath + reg.host, {
      authorization: auth,
      range: `bytes=${from}-`,
    });
    expect(part.status).toBe(206);
    expect(part.headers['content-range']).toBe(`bytes ${from}-${data.length - 1}/${data.length}`);
    expect(part.body.equals(data.subarray(from))).toBe(true);
    // the access was remembered: no second HEAD for the same credential and repository
    expect(mirror.counters.accessChecks).toBe(1);
    // a HEAD is the registry's own answer
    const head = await get(mirror.address, blobPath + reg.host, { authorization: auth }, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(data.length));
    expect((await get(mirror.address, blobPath + reg.host, {}, 'HEAD')).status).toBe(401);
    // no reader left: the blob lingers in the swarm, its cache in use; a full cache takes it back
    const inUse = () => node.caches.list().find((b) => b.digest === digest)?.inUse;
    expect(inUse()).toBe(true);
    expect(await node.caches.onFull?.()).toBe(true);
    expect(inUse()).toBe(false);
    expect(await node.caches.onFull?.()).toBe(false);
  }, 120_000);

  it('resets a half-fetched blob cut in pieces of another size (a node restarted across an upgrade), not one open elsewhere', async () => {
    // the cache as the old rule (1 MiB pieces) left it: that layout, one piece present
    const halfHeld = (b: Buffer) => halfHeldUnderOldPieces(node.caches, sha256Digest(b), b);
    const pull = (b: Buffer) =>
      get(mirror.address, `/v2/private/app/blobs/${sha256Digest(b)}?ns=${reg.host}`, { authorization: auth });
    await node.caches.release(await halfHeld(relaid[0]!));
    const fallbacks = mirror.counters.clusterFallbacks;
    const r = await pull(relaid[0]!);
    expect(r.status).toBe(200);
    expect(r.body.equals(relaid[0]!)).toBe(true);
    // through the cluster, into the cache under the table's pieces
    expect(mirror.counters.clusterFallbacks).toBe(fallbacks);
    const info = () => node.caches.list().find((b) => b.digest === sha256Digest(relaid[0]!));
    await waitFor('the blob complete in the cache', async () => info()?.complete, 10_000);
    expect(info()?.blocks).toBe(new PieceLayout(relaid[0]!.length, pieceSizeFor(relaid[0]!.length)).units);
    // open elsewhere (as a layer being read would be): not reset under its reader; the registry serves the engine
    const open = await halfHeld(relaid[1]!);
    try {
      const r2 = await pull(relaid[1]!);
      expect(r2.status).toBe(200);
      expect(r2.body.equals(relaid[1]!)).toBe(true);
      expect(mirror.counters.clusterFallbacks).toBe(fallbacks + 1);
      expect(open.unitCount).toBe(new PieceLayout(relaid[1]!.length, OLD_PIECE).units);
      expect(open.has(0)).toBe(true);
    } finally {
      await node.caches.release(open);
    }
  }, 120_000);

  it('never gives a blob the cluster holds to a request without access to it', async () => {
    const before = mirror.counters.bytes.blob ?? 0;
    const anon = await get(mirror.address, blobPath + reg.host);
    expect(anon.status).toBe(401);
    expect(String(anon.headers['www-authenticate'])).toMatch(/^Bearer /);
    const wrong = await get(mirror.address, blobPath + reg.host, { authorization: 'Bearer not-a-token' });
    expect(wrong.status).toBe(401);
    // a token for another repository: the registry knows no such blob there (or refuses the scope)
    const otherAuth = await engineToken(reg, 'private/other');
    const cross = await get(mirror.address, `/v2/private/other/blobs/${digest}?ns=${reg.host}`, {
      authorization: otherAuth,
    });
    expect([401, 403, 404]).toContain(cross.status);
    // and a grant for app does not open other's blob through the app path
    const viaApp = await get(mirror.address, `/v2/private/app/blobs/${otherDigest}?ns=${reg.host}`, {
      authorization: auth,
    });
    expect([401, 403, 404]).toContain(viaApp.status);
    expect(mirror.counters.bytes.blob ?? 0).toBe(before);
    expect(mirror.counters.accessDenied).toBeGreaterThanOrEqual(4);
  }, 60_000);

  it('asks the seed for manifests: one registry request for the nodes asking with the same credential', async () => {
    const m2 = await startMirrorNode(dir, 'm2', seed.addr, TOKEN);
    stops.push(() => m2.stop());
    const path = `/v2/private/app/manifests/big?ns=${reg.host}`;
    const manifestGets = () =>
      reg.requests().filter((r) => r.method === 'GET' && r.path.startsWith('/v2/private/app/manifests/big'))
        .length;
    const before = manifestGets();
    const headers = { authorization: auth, accept: 'application/vnd.oci.image.manifest.v1+json' };
    const answers = await Promise.all([
      get(mirror.address, path, headers),
      get(m2.mirror.address, path, headers),
    ]);
    for (const r of answers) {
      expect(r.status).toBe(200);
      expect(r.body.equals(bigManifest)).toBe(true);
    }
    expect(mirror.counters.seedManifests + m2.mirror.counters.seedManifests).toBe(2);
    // the registry's access log is read as it is written
    await waitFor(
      'the manifest GET in the access log',
      () => Promise.resolve(manifestGets() > before),
      10_000,
    );
    await new Promise((r) => setTimeout(r, 500));
    expect(manifestGets()).toBe(before + 1);
    // the seed's answer carries the registry's refusal to a request without credentials, challenge and all
    const anon = await get(m2.mirror.address, path, { accept: headers.accept });
    expect(anon.status).toBe(401);
    expect(String(anon.headers['www-authenticate'])).toMatch(/^Bearer /);
    await m2.stop();
  }, 60_000);

  it('a peer serving corrupt pieces is isolated; a second node still gets the blob, verified', async () => {
    const h = new PieceHasher(pieceSizeFor(big.length));
    h.update(big);
    const table = h.finish();
    // the liar: a cluster member that holds every piece corrupt, listed by the tracker
    const { node: liar, stop } = await startLyingPiecePeer({
      dir,
      seed: seed.addr,
      token: TOKEN,
      data: big,
      table,
    });
    stops.push(stop);
    // every request of b asks the registry first (no remembered access within the TTL); slow enough that
    // the tracker's answer (the liar) arrives before the last pieces are asked for
    const b = await startMirrorNode(dir, 'b', seed.addr, TOKEN, { accessTtlMs: 0, downloadRate: '32M' });
    stops.push(() => b.stop());
    const path = `/v2/private/app/blobs/${bigDigest}?ns=${reg.host}`;
    const manifestPath = `/v2/private/app/manifests/big?ns=${reg.host}`;
    const accept = 'application/vnd.oci.image.manifest.v1+json';
    expect((await get(b.mirror.address, manifestPath, { authorization: auth, accept })).status).toBe(200);
    const r = await get(b.mirror.address, path, { authorization: auth });
    expect(r.status).toBe(200);
    expect(r.complete).toBe(true);
    expect(sha256Digest(r.body)).toBe(bigDigest);
    expect(liar.server.counters.served).toBeGreaterThan(0);
    expect(b.mirror.pieceBytes.peer ?? 0).toBe(0);
    expect(b.mirror.pieceBytes.seed).toBe(big.length);
    // the registry is stopped: an engine allowed a moment ago still gets the blob (from b's cache)...
    await reg.stop();
    const again = await get(b.mirror.address, path, { authorization: auth });
    expect(again.status).toBe(200);
    expect(sha256Digest(again.body)).toBe(bigDigest);
    // from b's own pieces: nothing new moved, nothing streamed from the registry
    expect(b.mirror.pieceBytes).toEqual({ seed: big.length });
    expect(b.mirror.counters.blobSources.registry ?? 0).toBe(0);
    expect(b.mirror.counters.outageAnswers).toBe(1);
    // ... and a request without credentials does not (the registry cannot say it may)
    const anon = await get(b.mirror.address, path);
    expect(anon.status).toBe(502);
    expect(anon.body.length).toBeLessThan(1000);
    // b restarts (memory gone), the registry still down: before the manifest, nothing says the engine may
    // read the blob; the manifest from disk (same credential) remembers the registry's yes of its fetch,
    // and then the blob is answered from b's cache again; still nothing without credentials
    await b.restartMirror();
    expect((await get(b.mirror.address, path, { authorization: auth })).status).toBe(502);
    const m = await get(b.mirror.address, manifestPath, { authorization: auth, accept });
    expect(m.status).toBe(200);
    expect(m.body.equals(bigManifest)).toBe(true);
    expect(b.mirror.counters.staleManifests).toBe(1);
    expect((await get(b.mirror.address, manifestPath, { accept })).status).toBe(502);
    const restarted = await get(b.mirror.address, path, { authorization: auth });
    expect(restarted.status).toBe(200);
    expect(sha256Digest(restarted.body)).toBe(bigDigest);
    expect(b.mirror.counters.outageAnswers).toBe(1);
    expect((await get(b.mirror.address, path)).status).toBe(502);
    // a HEAD while the registry is down: the size of the blob b holds, to the engine allowed a moment ago
    const head = await get(b.mirror.address, path, { authorization: auth }, 'HEAD');
    expect(head.status).toBe(200);
    expect(head.headers['content-length']).toBe(String(big.length));
    expect(head.headers['docker-content-digest']).toBe(bigDigest);
    expect((await get(b.mirror.address, path, {}, 'HEAD')).status).toBe(502);

    // a node that never pulled the image, the registry still down: the manifest from the seed (it fetched it
    // for b with the same credential), the blob through the cluster; nothing without credentials
    const c = await startMirrorNode(dir, 'c', seed.addr, TOKEN);
    stops.push(() => c.stop());
    expect((await get(c.mirror.address, manifestPath, { accept })).status).toBe(502);
    const fresh = await get(c.mirror.address, manifestPath, { authorization: auth, accept });
    expect(fresh.status).toBe(200);
    expect(fresh.body.equals(bigManifest)).toBe(true);
    expect(c.mirror.counters.staleManifests).toBe(1);
    expect((await get(c.mirror.address, path)).status).toBe(502);
    const blob = await get(c.mirror.address, path, { authorization: auth });
    expect(blob.status).toBe(200);
    expect(blob.complete).toBe(true);
    expect(sha256Digest(blob.body)).toBe(bigDigest);
    expect((c.mirror.pieceBytes.seed ?? 0) + (c.mirror.pieceBytes.peer ?? 0)).toBe(big.length);
    expect(c.mirror.pieceBytes.registry ?? 0).toBe(0);
  }, 180_000);
});
