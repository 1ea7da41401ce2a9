/**
 * A seed preheats on request over HTTP (`POST /preheat`), as a registry's push webhook or a rollout would
 * ask: authenticated by the cluster token (header or bearer), bounded, refusing registries outside
 * p2p.seedRegistries; the image's layers end up complete and verified in the seed's cache even with the
 * seed's own fill off. Real docker-registry, dfconvert'd image and an in-process seed on loopback.
 */
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeClient } from '../../src/cli/registry-client.js';
import { loadConfig } from '../../src/config.js';
import { silentLogger } from '../../src/log.js';
import { CLUSTER_TOKEN_HEADER } from '../../src/p2p/auth.js';
import { Seed } from '../../src/p2p/seed.js';
import {
  dfbLayers,
  expectCacheMatches,
  nodeTempDir,
  pushAndConvert,
  waitFor,
  type ImageSet,
} from '../helpers/node.js';
import { requireTools } from '../helpers/require.js';

const req = requireTools(['docker-registry', 'skopeo', 'umoci']);
const TOKEN = 'seed-preheat-token';

describe.skipIf(req.skip)('seed preheat over HTTP', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let ref: string;
  let seed: Seed;
  let url: string;
  const closers: Array<() => Promise<unknown>> = [];

  beforeAll(async () => {
    tmp = await nodeTempDir('seed-preheat-');
    images = await pushAndConvert(['multilayer'], tmp.dir);
    ref = images.dfb.multilayer!;
    const cfg = loadConfig({
      env: {},
      flags: {
        logLevel: 'silent',
        registry: { plainHttp: true },
        cache: { dir: join(tmp.dir, 'seed-cache') },
        // port 0: the seed takes a block port whose + 1 (its gRPC tracker) is free too
        p2p: {
          clusterToken: TOKEN,
          listen: '127.0.0.1:0',
          seedFill: false,
          seedRegistries: [images.reg.host],
        },
      },
    });
    const client = makeClient(cfg, silentLogger, undefined);
    seed = new Seed({ config: cfg, client });
    const { blocks } = await seed.start();
    url = `http://${blocks}/preheat`;
    closers.push(
      () => client.close(),
      () => seed.close(),
    );
  }, 600_000);

  afterAll(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    await images?.reg.stop();
    await tmp?.cleanup();
  });

  const post = async (
    body: string | object,
    headers: Record<string, string> = { authorization: `Bearer ${TOKEN}` },
    method = 'POST',
  ) => {
    const r = await request(url, {
      method: method as 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: method === 'GET' ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    return { status: r.statusCode, text: await r.body.text() };
  };

  it('refuses requests without the cluster token, malformed or oversized bodies and other methods', async () => {
    expect((await post({ image: ref }, {})).status).toBe(401);
    expect((await post({ image: ref }, { authorization: 'Bearer wrong' })).status).toBe(401);
    expect((await post({}, {}, 'GET')).status).toBe(401);
    expect((await post({}, { [CLUSTER_TOKEN_HEADER]: TOKEN }, 'GET')).status).toBe(405);
    const notJson = await post('{"image":');
    expect(notJson.status).toBe(400);
    expect(notJson.text).toMatch(/not JSON/);
    expect((await post({ hello: 1 })).text).toMatch(/names no image/);
    expect((await post({ images: Array.from({ length: 65 }, (_, i) => `x/y:${i}`) })).status).toBe(400);
    expect((await post('x'.repeat(300 * 1024))).status).toBe(413);
    expect(seed.preheats).toEqual([]);
  });

  it('refuses images of registries outside p2p.seedRegistries without contacting them', async () => {
    const r = await post({ images: ['evil.example/x:1', 'not a reference'] });
    expect(r.status).toBe(403);
    const a = JSON.parse(r.text) as { accepted: string[]; refused: { image: string; reason: string }[] };
    expect(a.accepted).toEqual([]);
    expect(a.refused.map((x) => x.image)).toEqual(['evil.example/x:1', 'not a reference']);
    expect(a.refused[0]!.reason).toMatch(/seedRegistries/);
  });

  it('preheats the image a registry push notification names: every layer complete and verified', async () => {
    const [, repoTag] = /^[^/]+\/(.+)$/.exec(ref)!;
    const [repo, tag] = repoTag!.split(':');
    const envelope = {
      events: [
        // a blob push is not an image: skipped
        {
          action: 'push',
          target: {
            mediaType: 'application/octet-stream',
            repository: repo,
            digest: 'sha256:' + '0'.repeat(64),
          },
          request: { host: images.reg.host },
        },
        {
          action: 'push',
          target: { mediaType: 'application/vnd.oci.image.manifest.v1+json', repository: repo, tag },
          request: { host: images.reg.host },
        },
      ],
    };
    const r = await post(envelope);
    expect(r.status).toBe(202);
    expect(JSON.parse(r.text)).toEqual({ accepted: [ref], refused: [] });
    await waitFor('preheat to finish', async () => seed.preheats.length === 0, 120_000);
    const layers = await dfbLayers(images.reg.url, ref);
    await expectCacheMatches(join(tmp.dir, 'seed-cache'), layers);
  }, 180_000);
});
