/**
 * The node's metrics over real FUSE mounts of a converted image in a real registry: the snapshotter's layer
 * mounts (NodeRuntime.mountLayer, what `dfnode run` uses) count in dfnode_mounts and dfnode_cache_fill_ratio,
 * bytes answered in C (direct reads) show in dfnode_bytes_total{source="direct"}, a failed read counts in
 * dfnode_read_errors_total by errno, and verification failures keep their source.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EntryType } from '../../src/blob/types.js';
import { loadConfig } from '../../src/config.js';
import { NodeMetrics } from '../../src/daemon/metrics.js';
import { NodeRuntime, type MountedLayer } from '../../src/daemon/node-runtime.js';
import { NativeFuseBinding } from '../../src/fuse/native-binding.js';
import { RegistryClient } from '../../src/registry/client.js';
import { resolveDfbImage, type DfbLayer } from '../../src/registry/image.js';
import { parseReference, type ImageReference } from '../../src/registry/reference.js';
import { sampleValue as sample } from '../helpers/prom.js';
import { nodeTempDir, pushAndConvert, requireNodeMounts, type ImageSet } from '../helpers/node.js';

const req = requireNodeMounts();
const native = NativeFuseBinding.available();

describe.skipIf(req.skip || !native)('node metrics over real FUSE mounts', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let client: RegistryClient;
  let rt: NodeRuntime;
  let metrics: NodeMetrics;
  let ref: ImageReference;
  let layers: DfbLayer[];
  const mounted: MountedLayer[] = [];

  beforeAll(async () => {
    tmp = await nodeTempDir('dfnode-metrics-');
    images = await pushAndConvert(['multilayer'], tmp.dir);
    client = new RegistryClient({ plainHttp: true });
    ref = parseReference(images.dfb.multilayer!);
    layers = (await resolveDfbImage(client, ref)).layers;
    metrics = new NodeMetrics({ defaultMetrics: false });
    const config = loadConfig({
      env: {},
      flags: {
        registry: { plainHttp: true },
        cache: { dir: join(tmp.dir, 'cache') },
        node: { stateDir: join(tmp.dir, 'state'), containerdAddress: '' },
        // no fill: a file not read stays uncached; a short read timeout once the registry is gone
        fetch: { backgroundFill: false, readTimeoutMs: 2000 },
      },
    });
    rt = new NodeRuntime({ config, client, metrics, binding: new NativeFuseBinding() });
    await rt.start();
  });

  afterAll(async () => {
    for (const m of mounted) await rt?.releaseLayer(m).catch(() => undefined);
    await rt?.close().catch(() => undefined);
    await client?.close().catch(() => undefined);
    await images?.reg.stop().catch(() => undefined);
    await tmp?.cleanup();
  });

  const mount = async (i: number, name: string) => {
    const m = await rt.mountLayer(ref, layers[i]!, join(tmp.dir, 'mnt', name));
    mounted.push(m);
    return m;
  };
  const release = async (m: MountedLayer) => {
    mounted.splice(mounted.indexOf(m), 1);
    await rt.releaseLayer(m);
  };
  /** Regular files of a layer, largest first. */
  const files = (m: MountedLayer) =>
    [...m.layer.toc.walk()]
      .filter((e) => m.layer.toc.type(e.ino) === EntryType.File && m.layer.toc.stat(e.ino).size > 0)
      .sort((a, b) => m.layer.toc.stat(b.ino).size - m.layer.toc.stat(a.ino).size);

  it("counts the snapshotter's layer mounts and their fill ratio, and drops the ratio when the layer closes", async () => {
    const a = await mount(0, 'a');
    let text = await metrics.text();
    expect(sample(text, 'dfnode_mounts')).toBe(1);
    expect(sample(text, 'dfnode_cache_fill_ratio', { blob: a.layer.digest })).toBeGreaterThanOrEqual(0);
    await release(a);
    text = await metrics.text();
    expect(sample(text, 'dfnode_mounts')).toBe(0);
    expect(sample(text, 'dfnode_cache_fill_ratio', { blob: a.layer.digest })).toBeUndefined();
  });

  it('counts bytes answered in C from the cache as source="direct"', async () => {
    const a = await mount(0, 'b1');
    const [big] = files(a);
    expect(big, 'a file in the layer').toBeDefined();
    const path = join(a.mount.mountpoint, big!.path);
    const want = await readFile(path); // fetched through JS, now in the cache
    await release(a);
    const before = sample(await metrics.text(), 'dfnode_bytes_total', { source: 'direct' }) ?? 0;
    // a new mount: empty page cache, the blocks in the cache file: reads after the first are answered in C
    const b = await mount(0, 'b2');
    expect((await readFile(join(b.mount.mountpoint, big!.path))).equals(want)).toBe(true);
    const direct = (b.mount as unknown as { info(): { directBytes: number } }).info().directBytes;
    await release(b); // what the mount served is counted at release too
    const after = sample(await metrics.text(), 'dfnode_bytes_total', { source: 'direct' }) ?? 0;
    expect(after - before).toBe(direct);
    // an 8 MiB file: every read after the first is answered in C
    expect(want.length).toBeGreaterThan(1 << 20);
    expect(direct).toBeGreaterThan(0);
  });

  it('labels verification failures with their source', async () => {
    rt.stats.recordVerifyFailure('peer');
    rt.stats.recordVerifyFailure('cache');
    rt.stats.recordVerifyFailure('cache');
    const text = await metrics.text();
    expect(sample(text, 'dfnode_verification_failures_total', { source: 'peer' })).toBe(1);
    expect(sample(text, 'dfnode_verification_failures_total', { source: 'cache' })).toBe(2);
    expect(sample(text, 'dfnode_verification_failures_total', { source: 'any' })).toBeUndefined();
  });

  it('counts a failed read in dfnode_read_errors_total by errno', async () => {
    const c = await mount(layers.length - 1, 'c');
    const uncached = files(c).at(-1)!;
    await images.reg.stop(); // the registry is gone: the read fails (EIO) after the read timeout
    const err = await readFile(join(c.mount.mountpoint, uncached.path)).catch(
      (e: NodeJS.ErrnoException) => e,
    );
    expect((err as NodeJS.ErrnoException).code).toBe('EIO');
    expect(sample(await metrics.text(), 'dfnode_read_errors_total', { errno: 'EIO' })).toBeGreaterThanOrEqual(
      1,
    );
    await release(c);
  });
});
