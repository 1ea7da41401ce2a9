/**
 * Docker's `/v2/` probe of a mirror (distribution's PingV2Registry): the answer must carry
 * `Docker-Distribution-API-Version: registry/2.0` (Docker takes it as "a v2 registry": no v1 fallback) and the
 * registry's challenge, whatever the registry itself sent, and with the registry down.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { MirrorServer } from '../../src/mirror/mirror-server.js';
import { Upstream } from '../../src/mirror/upstream.js';
import { freeLoopbackPort } from '../../src/util/free-port.js';
import { httpAnswer as get } from '../helpers/raw-http.js';

const CHALLENGE = 'Bearer realm="http://127.0.0.1:1/token",service="registry.docker.io"';

describe("Docker's /v2/ probe", () => {
  let upstream: Server;
  const mirrors: MirrorServer[] = [];

  const mirrorFor = async (registry: string) => {
    const m = new MirrorServer({
      listen: '127.0.0.1:0',
      upstream: new Upstream({ plainHttp: true, timeoutMs: 5_000 }),
      defaultRegistry: registry,
      logger: silentLogger,
    });
    await m.start();
    mirrors.push(m);
    return m;
  };

  beforeAll(async () => {
    // like Docker Hub's /v2/: a 401 with a challenge; and no version header of its own
    upstream = createServer((_q, s) => {
      s.writeHead(401, { 'www-authenticate': CHALLENGE, 'content-type': 'application/json' });
      s.end('{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}');
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  });

  afterAll(async () => {
    for (const m of mirrors) await m.close();
    await new Promise((r) => upstream?.close(r));
  });

  it('relays the challenge with the API version header', async () => {
    const m = await mirrorFor(`127.0.0.1:${(upstream.address() as AddressInfo).port}`);
    const r = await get(m.address, '/v2/');
    expect(r.status).toBe(401);
    expect(r.headers['www-authenticate']).toBe(CHALLENGE);
    expect(r.headers['docker-distribution-api-version']).toBe('registry/2.0');
  });

  it('answers 200 with the header while the registry is down, and on refusals', async () => {
    // a port nothing listens on a moment after it was free
    const m = await mirrorFor(`127.0.0.1:${await freeLoopbackPort()}`);
    const r = await get(m.address, '/v2/');
    expect(r.status).toBe(200);
    expect(r.headers['docker-distribution-api-version']).toBe('registry/2.0');
    const bad = await get(m.address, '/v2/Library/x/manifests/1');
    expect(bad.status).toBe(400);
    expect(bad.headers['docker-distribution-api-version']).toBe('registry/2.0');
  });
});
