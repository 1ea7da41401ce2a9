/**
 * The FUSE manager with the P2P tier on (regression test of the layer lifetime): mounting a layer opens its
 * lower layers for their TOCs and gives them back; a layer given back by every holder leaves its swarm
 * before its cache closes, so the node never announces or serves a closed cache, and a layer mounted later
 * serves peers correct, verified blocks. Real registry, seed (tracker) and kernel FUSE mounts; in-process.
 * Needs root, /dev/fuse, docker-registry, skopeo and umoci; skips locally with a printed reason.
 */
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makeClient } from '../../src/cli/registry-client.js';
import { loadConfig, type Config } from '../../src/config.js';
import { NodeRuntime } from '../../src/daemon/node-runtime.js';
import { FuseManagerClient } from '../../src/fusemanager/client.js';
import { fuseManagerPaths } from '../../src/fusemanager/protocol.js';
import { FuseManagerServer } from '../../src/fusemanager/server.js';
import { silentLogger } from '../../src/log.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { Seed } from '../../src/p2p/seed.js';
import {
  dfbLayers,
  nodeTempDir,
  pushAndConvert,
  requireNodeMounts,
  unmountAllUnder,
  waitFor,
  type DfbManifestLayer,
  type ImageSet,
} from '../helpers/node.js';

const req = requireNodeMounts(['docker-registry']);
const TOKEN = 'fuse-manager-p2p-token';
/** How long a preheat's layers stay served (short here: the test waits for their release). */
const PREHEAT_SERVE_MS = 4000;

describe.skipIf(req.skip)('FUSE manager with P2P: layers opened for their TOCs and released', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let ref: string;
  let layers: DfbManifestLayer[];
  let seed: Seed;
  let seedAddr: string;
  let p2p: P2pNode;
  let rt: NodeRuntime;
  let server: FuseManagerServer;
  let fm: FuseManagerClient;
  let blocks: HttpBlockClient;
  const closers: Array<() => Promise<unknown>> = [];

  const config = (name: string, seeds: string[], listen: string): Config =>
    loadConfig({
      env: {},
      flags: {
        logLevel: 'silent',
        registry: { plainHttp: true },
        cache: { dir: join(tmp.dir, name, 'cache') },
        node: { stateDir: join(tmp.dir, name, 'state'), fuseManager: true },
        fetch: { backgroundFill: false },
        p2p: {
          seeds,
          clusterToken: TOKEN,
          listen,
          announceIntervalMs: 200,
          peerTtlMs: 60_000,
          preheatServeMs: PREHEAT_SERVE_MS,
        },
      },
    });

  beforeAll(async () => {
    tmp = await nodeTempDir('fm-p2p-');
    images = await pushAndConvert(['multilayer'], tmp.dir);
    ref = images.dfb.multilayer!;
    layers = await dfbLayers(images.reg.url, ref);
    expect(layers.length).toBeGreaterThanOrEqual(2);

    // port 0: the seed takes a block port whose + 1 (its gRPC tracker) is free too
    const seedCfg = config('seed', [], '127.0.0.1:0');
    seedCfg.p2p.seedFill = false;
    seedCfg.p2p.seedRegistries = [images.reg.host];
    const seedClient = makeClient(seedCfg, silentLogger, undefined);
    seed = new Seed({ config: seedCfg, client: seedClient });
    seedAddr = (await seed.start()).blocks;
    closers.push(
      () => seedClient.close(),
      () => seed.close(),
    );

    const nodeCfg = config('node', [seedAddr], '127.0.0.1:0');
    const client = makeClient(nodeCfg, silentLogger, undefined);
    p2p = new P2pNode({ config: nodeCfg });
    await p2p.start();
    rt = new NodeRuntime({ config: nodeCfg, client, p2p });
    await rt.start();
    server = new FuseManagerServer({
      runtime: rt,
      stateDir: nodeCfg.node.stateDir,
      mountRoots: [tmp.dir],
      client,
    });
    await server.listen();
    fm = new FuseManagerClient(fuseManagerPaths(nodeCfg.node.stateDir).socket);
    blocks = new HttpBlockClient(TOKEN);
    closers.push(
      () => client.close(),
      () => p2p.close(),
      () => rt.close(),
      () => server.close(),
      () => blocks.close(),
    );
  }, 600_000);

  afterAll(async () => {
    for (const c of closers.reverse()) await c().catch(() => undefined);
    if (tmp) await unmountAllUnder(tmp.dir).catch(() => undefined);
    await images?.reg.stop();
    await tmp?.cleanup();
  });

  const layerReq = (l: DfbManifestLayer) => ({ digest: l.digest, size: l.size });
  const holders = (digest: string) => seed.tracker.peers(digest).filter((id) => id === p2p.id);

  it('announces only the layers it holds, and serves a later mount of a lower layer from a live cache', async () => {
    const lower = layers[0]!;
    const upper = layers[layers.length - 1]!;
    const mnt = join(tmp.dir, 'mnt');
    await mkdir(join(mnt, 'upper'), { recursive: true });
    await mkdir(join(mnt, 'lower'), { recursive: true });

    // The upper layer's mount opens every lower layer for its TOC, then gives them back.
    await fm.mount({
      imageRef: ref,
      layer: layerReq(upper),
      mountpoint: join(mnt, 'upper'),
      lowerLayers: layers.slice(0, -1).map(layerReq),
    });
    expect(rt.layers.list().map((l) => l.digest)).toEqual([upper.digest]);
    // The node announced the upper layer and left the swarm of the lower one (nothing holds it).
    await waitFor('the upper layer announced', async () => holders(upper.digest).length === 1, 10_000);
    await waitFor('the lower layer left', async () => holders(lower.digest).length === 0, 10_000);
    // ...and does not serve it to peers any more.
    const tocUnitOffset = lower.size - 96;
    await expect(
      blocks.get(p2p.advertised, lower.digest, tocUnitOffset, 96, AbortSignal.timeout(5000)),
    ).rejects.toThrow();

    // Mounted now on its own: the node serves it again, from its live cache, with correct bytes.
    await fm.mount({ imageRef: ref, layer: layerReq(lower), mountpoint: join(mnt, 'lower') });
    const layer = rt.layers.list().find((l) => l.digest === lower.digest)!;
    // Read regular files through the kernel until the first block is cached. The walk is by hand with async
    // calls: this process serves the mount, so nothing here may block its thread (no sync stat of a link).
    const walk = async (dir: string): Promise<void> => {
      for (const e of await readdir(dir, { withFileTypes: true })) {
        if (layer.cache.has(0)) return;
        const p = join(dir, e.name);
        if (e.isDirectory()) await walk(p);
        else if (e.isFile()) await readFile(p);
      }
    };
    await walk(join(mnt, 'lower'));
    expect(layer.cache.has(0)).toBe(true);
    await waitFor('the lower layer announced again', async () => holders(lower.digest).length === 1, 10_000);
    const blob = Buffer.from(
      await (await fetch(`${images.reg.url}/v2/multilayer/blobs/${lower.digest}`)).arrayBuffer(),
    );
    const served = await blocks.get(
      p2p.advertised,
      lower.digest,
      tocUnitOffset,
      96,
      AbortSignal.timeout(5000),
    );
    expect(served.equals(blob.subarray(tocUnitOffset))).toBe(true);
    // the block the reads put in the cache: served exactly as the blob holds it
    const span = await blocks.get(p2p.advertised, lower.digest, 0, 1024, AbortSignal.timeout(5000));
    expect(span.equals(blob.subarray(0, 1024))).toBe(true);

    // Everything released: nothing is announced or served.
    expect(await fm.release(join(mnt, 'upper'))).toBe(true);
    expect(await fm.release(join(mnt, 'lower'))).toBe(true);
    expect(rt.layers.list()).toEqual([]);
    await waitFor(
      'both layers left',
      async () => holders(lower.digest).length === 0 && holders(upper.digest).length === 0,
      10_000,
    );
    await expect(
      blocks.get(p2p.advertised, upper.digest, upper.size - 96, 96, AbortSignal.timeout(5000)),
    ).rejects.toThrow();
  });

  it("a preheat through the daemon keeps the image's layers served to peers for p2p.preheatServeMs", async () => {
    expect(rt.layers.list()).toEqual([]);
    const t0 = Date.now();
    const r = await fm.preheat(ref, AbortSignal.timeout(120_000));
    expect(r.bytes).toBe(layers.reduce((a, l) => a + l.size, 0));
    // Right after the answer every layer is still open, announced and served: peers warming the same image
    // now take its blocks from this host.
    expect(rt.preheatHolds.size).toBe(1);
    expect(
      rt.layers
        .list()
        .map((l) => l.digest)
        .sort(),
    ).toEqual(layers.map((l) => l.digest).sort());
    const blob = Buffer.from(
      await (await fetch(`${images.reg.url}/v2/multilayer/blobs/${layers[0]!.digest}`)).arrayBuffer(),
    );
    for (const l of layers)
      await waitFor(`${l.digest} announced`, async () => holders(l.digest).length === 1, 10_000);
    const mid = Math.floor(blob.length / 2);
    const got = await blocks.get(p2p.advertised, layers[0]!.digest, mid, 4096, AbortSignal.timeout(5000));
    expect(got.equals(blob.subarray(mid, mid + 4096))).toBe(true);
    // ...until the time is up: then they are released and leave their swarms.
    await waitFor(
      'the preheat released',
      async () => rt.layers.list().length === 0,
      PREHEAT_SERVE_MS + 10_000,
    );
    expect(Date.now() - t0).toBeGreaterThanOrEqual(PREHEAT_SERVE_MS);
    expect(rt.preheatHolds.size).toBe(0);
    await waitFor(
      'every layer left',
      async () => layers.every((l) => holders(l.digest).length === 0),
      10_000,
    );
  });
});
