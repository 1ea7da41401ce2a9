/**
 * The seed's manifest relay on the block server's port (`GET /manifests/v2/...`, manifest-request.ts) and the
 * node's side of it (HttpBlockClient.manifest, seedManifest, clusterManifests): real listener on loopback,
 * the relay's answers played by a stub. Only token holders reach it, only with GET; the engine's own
 * headers go through and the cluster token does not; a node takes a seed's manifest only as declared and
 * checked, relays the registry's refusals, and passes over a seed that refuses, lies or is down.
 */
import { createHash } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { clusterManifests } from '../../src/mirror/cluster-manifests.js';
import { BlockServer } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import {
  MANIFEST_AGE_HEADER,
  MANIFEST_FROM_HEADER,
  MANIFEST_STALE_HEADER,
  type ManifestWireAnswer,
} from '../../src/p2p/manifest-request.js';
import { realTimers } from '../../src/util/timers.js';
import { freePort } from '../helpers/registry.js';
import { rawExchange, statusOf } from '../helpers/raw-http.js';

const TOKEN = 'manifest-endpoint-token';
const MANIFEST = Buffer.from('{"schemaVersion":2}');
const DIGEST = `sha256:${createHash('sha256').update(MANIFEST).digest('hex')}`;

/** What the stub relay answers next, and what it was asked. */
let next: () => ManifestWireAnswer;
const asked: { target: string; headers: Record<string, unknown> }[] = [];

describe("a seed's manifest relay on its P2P port", () => {
  let server: BlockServer;
  let plain: BlockServer;
  let addr: string;
  let port: number;
  let plainPort: number;
  const client = new HttpBlockClient(TOKEN);

  beforeAll(async () => {
    const provider = { get: () => Promise.resolve(undefined) };
    server = new BlockServer({
      provider,
      clusterToken: TOKEN,
      manifests: (target, headers) => {
        asked.push({ target, headers });
        return Promise.resolve(next());
      },
    });
    addr = await server.listen('127.0.0.1:0');
    port = Number(addr.slice(addr.lastIndexOf(':') + 1));
    plain = new BlockServer({ provider, clusterToken: TOKEN });
    const p = await plain.listen('127.0.0.1:0');
    plainPort = Number(p.slice(p.lastIndexOf(':') + 1));
  });
  afterAll(async () => {
    await client.close();
    await server.close();
    await plain.close();
  });

  const req = (path: string, headers: string[], method = 'GET') =>
    [`${method} ${path} HTTP/1.1`, 'Host: seed', 'Connection: close', ...headers, '', ''].join('\r\n');
  const path = '/manifests/v2/app/manifests/v1?ns=registry.example.com';

  it('answers only token holders, only GET; a seed without the relay answers 404', async () => {
    next = () => ({ status: 200, headers: {}, body: MANIFEST });
    asked.length = 0;
    expect(statusOf(await rawExchange(port, req(path, [])))).toBe(401);
    expect(statusOf(await rawExchange(port, req(path, ['x-dfnode-cluster-token: nope'])))).toBe(401);
    expect(statusOf(await rawExchange(port, req(path, [`x-dfnode-cluster-token: ${TOKEN}`], 'POST')))).toBe(
      405,
    );
    expect(asked).toEqual([]);
    expect(statusOf(await rawExchange(plainPort, req(path, [`x-dfnode-cluster-token: ${TOKEN}`])))).toBe(404);
  });

  it("passes the engine's headers and the pull path on, never the cluster token", async () => {
    next = () => ({ status: 200, headers: { [MANIFEST_AGE_HEADER]: '0' }, body: MANIFEST });
    asked.length = 0;
    const r = await client.manifest(
      addr,
      '/v2/app/manifests/v1?ns=registry.example.com',
      { authorization: 'Bearer engine', accept: 'application/vnd.oci.image.manifest.v1+json' },
      1 << 20,
      AbortSignal.timeout(5_000),
    );
    expect(r.status).toBe(200);
    expect(r.body.equals(MANIFEST)).toBe(true);
    expect(asked).toEqual([
      {
        target: '/v2/app/manifests/v1?ns=registry.example.com',
        headers: { authorization: 'Bearer engine', accept: 'application/vnd.oci.image.manifest.v1+json' },
      },
    ]);
  });

  it("a node takes the seed's manifest with its age, relays the registry's refusal, passes over the rest", async () => {
    const isolation = new Isolation();
    const deps = () => ({ seeds: [addr], isolation, http: client, timers: realTimers });
    let now = 50_000;
    const via = clusterManifests(deps, silentLogger, () => now);
    const q = {
      registry: 'registry.example.com',
      repository: 'app',
      reference: 'v1',
      authorization: 'Bearer x',
    };
    const signal = () => AbortSignal.timeout(5_000);

    next = () => ({ status: 200, headers: { [MANIFEST_AGE_HEADER]: '1500' }, body: MANIFEST });
    const ok = await via(q, signal());
    expect(ok).toMatchObject({
      kind: 'manifest',
      from: 'seed',
      manifest: { digest: DIGEST, storedAt: 48_500 },
    });
    next = () => ({
      status: 200,
      headers: { [MANIFEST_AGE_HEADER]: '10', [MANIFEST_STALE_HEADER]: '1' },
      body: MANIFEST,
    });
    expect(await via(q, signal())).toMatchObject({ kind: 'manifest', from: 'stale' });
    next = () => ({
      status: 401,
      headers: { [MANIFEST_FROM_HEADER]: 'registry', 'www-authenticate': 'Bearer realm="x"' },
      body: Buffer.from('{"errors":[]}'),
    });
    const refused = await via(q, signal());
    expect(refused).toMatchObject({
      kind: 'refused',
      status: 401,
      headers: { 'www-authenticate': 'Bearer realm="x"' },
    });
    // a manifest without its age, a seed's own failure: the node asks the registry (undefined)
    next = () => ({ status: 200, headers: {}, body: MANIFEST });
    expect(await via(q, signal())).toBeUndefined();
    next = () => ({ status: 502, headers: {}, body: Buffer.from('registry unreachable') });
    expect(await via(q, signal())).toBeUndefined();
    // another content for a digest: refused (the relay then asks the registry)
    next = () => ({ status: 200, headers: { [MANIFEST_AGE_HEADER]: '0' }, body: Buffer.from('{}') });
    await expect(via({ ...q, reference: DIGEST }, signal())).rejects.toMatchObject({
      code: 'DIGEST_MISMATCH',
    });
    // larger than a manifest may be: not read, the seed passed over (and isolated for a while)
    next = () => ({
      status: 200,
      headers: { [MANIFEST_AGE_HEADER]: '0' },
      body: Buffer.alloc((4 << 20) + 1),
    });
    expect(await via(q, signal())).toBeUndefined();
    expect(isolation.isolated(addr)).toBe(true);
    // a registry the seed refuses is not asked of it again for a minute
    const other = new Isolation();
    const via2 = clusterManifests(
      () => ({ seeds: [addr], isolation: other, http: client, timers: realTimers }),
      silentLogger,
      () => now,
    );
    asked.length = 0;
    next = () => ({ status: 403, headers: {}, body: Buffer.from('not in p2p.seedRegistries') });
    expect(await via2(q, signal())).toBeUndefined();
    expect(await via2(q, signal())).toBeUndefined();
    expect(asked.length).toBe(1);
    now += 61_000;
    expect(await via2(q, signal())).toBeUndefined();
    expect(asked.length).toBe(2);
  });

  it('a seed that is down is isolated and the node asks the registry', async () => {
    const isolation = new Isolation();
    const down = `127.0.0.1:${await freePort()}`;
    const via = clusterManifests(
      () => ({ seeds: [down], isolation, http: client, timers: realTimers }),
      silentLogger,
    );
    expect(
      await via(
        { registry: 'r.example.com', repository: 'app', reference: 'v1' },
        AbortSignal.timeout(5_000),
      ),
    ).toBeUndefined();
    expect(isolation.isolated(down)).toBe(true);
  });
});
