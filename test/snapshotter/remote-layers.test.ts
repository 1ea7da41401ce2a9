/**
 * Remote layers end to end at the snapshotter's socket: a converted image in a real registry, Prepare with
 * the labels containerd's CRI plugin sets → ALREADY_EXISTS, the layer committed under the target and
 * mounted lazily with FUSE; a view over the chain shows the image's files; Remove leaves no mounts. A layer
 * mount that dies (connection aborted: ENOTCONN; unmounted behind the snapshotter's back) is mounted again
 * by the next Mounts. (containerd itself is exercised by test/integration/containerd-*.test.ts.)
 */
import { spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { NodeRuntime } from '../../src/daemon/node-runtime.js';
import { abortConnection, probeMount, readMountInfo } from '../../src/fuse/mounts.js';
import { createSnapshotsClient } from '../../src/grpc/load-proto.js';
import { RegistryClient } from '../../src/registry/client.js';
import { parseManifestOrIndex } from '../../src/registry/oci.js';
import { parseReference } from '../../src/registry/reference.js';
import { serveSnapshotter, type SnapshotterServer } from '../../src/snapshotter/grpc-service.js';
import { NodeRemoteLayers } from '../../src/daemon/node-remote-layers.js';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import { pushAndConvert, requireNodeMounts, type ImageSet } from '../helpers/node.js';

const req = requireNodeMounts();

function call<T = any>(c: any, method: string, reqBody: Record<string, unknown>): Promise<T> {
  return new Promise((resolve, reject) =>
    c[method](reqBody, (err: any, res: T) => (err ? reject(err) : resolve(res))),
  );
}

async function sh(cmd: string, args: string[]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let e = '';
    p.stderr.on('data', (d: Buffer) => (e += d.toString()));
    p.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')}: ${e}`))));
  });
}

describe.skipIf(req.skip)('remote DFB layers through the snapshotter', () => {
  let work: string;
  let images: ImageSet;
  let rt: NodeRuntime;
  let client: RegistryClient;
  let sn: Snapshotter;
  let server: SnapshotterServer;
  let c: any;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'dfnode-snapremote-'));
    images = await pushAndConvert(['busybox', 'multilayer'], work);
    const cfg = loadConfig({
      env: {},
      flags: {
        registry: { plainHttp: true },
        cache: { dir: join(work, 'cache') },
        node: { stateDir: join(work, 'state') },
      },
    });
    client = new RegistryClient({ plainHttp: true });
    rt = new NodeRuntime({ config: cfg, client });
    await rt.start();
    sn = new Snapshotter({
      root: join(work, 'root'),
      remote: new NodeRemoteLayers(rt, client),
      checkTtlMs: 0,
    });
    await sn.start();
    server = await serveSnapshotter(sn, join(work, 'snap.sock'));
    c = createSnapshotsClient(join(work, 'snap.sock'));
  });

  afterAll(async () => {
    c?.close();
    await server?.stop();
    await sn?.close();
    await rt?.close();
    await client?.close();
    await images?.reg.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  /** Prepares every layer of `name` as a remote snapshot; returns the chain names, bottom first. */
  async function prepareChain(name: 'busybox' | 'multilayer', prefix: string): Promise<string[]> {
    const ref = parseReference(images.dfb[name]!);
    const m = await client.getManifest(ref);
    const parsed = parseManifestOrIndex(m.bytes, m.mediaType, 'manifest');
    if (parsed.kind !== 'manifest') throw new Error('expected a manifest');
    const layers = parsed.manifest.layers.map((l) => l.digest);
    const chains: string[] = [];
    for (const [i, digest] of layers.entries()) {
      const chain = `${prefix}-chain-${i}`;
      const labels = {
        'containerd.io/snapshot.ref': chain,
        'containerd.io/snapshot/cri.image-ref': images.dfb[name]!,
        'containerd.io/snapshot/cri.manifest-digest': m.digest,
        'containerd.io/snapshot/cri.layer-digest': digest,
        'containerd.io/snapshot/cri.image-layers': layers.join(','),
      };
      const err = await call(c, 'Prepare', {
        key: `extract-${i} ${chain}`,
        parent: chains.at(-1) ?? '',
        labels,
      }).then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(err?.code, err?.details).toBe(grpc.status.ALREADY_EXISTS);
      const { info } = await call(c, 'Stat', { key: chain });
      expect(info.kind).toBe('COMMITTED');
      expect(info.parent).toBe(chains.at(-1) ?? '');
      expect(info.labels['containerd.io/snapshot/dfnode.dfb-layer']).toBe(digest);
      chains.push(chain);
    }
    return chains;
  }

  const fuseAt = (mountpoint: string) =>
    readMountInfo().some((x) => x.mountpoint === mountpoint && x.fstype.startsWith('fuse'));

  it('a dead layer mount (ENOTCONN, or unmounted behind our back) is mounted again by Mounts', async () => {
    const chains = await prepareChain('multilayer', 'dead');
    expect(chains.length).toBeGreaterThanOrEqual(2);
    const { mounts } = await call(c, 'Prepare', { key: 'dead-ctr', parent: chains.at(-1), labels: {} });
    const lower: string[] = mounts[0].options
      .find((o: string) => o.startsWith('lowerdir='))
      .slice('lowerdir='.length)
      .split(':');
    const [bottom, next] = [lower.at(-1)!, lower.at(-2)!];
    expect(fuseAt(bottom) && fuseAt(next)).toBe(true);
    expect(abortConnection(bottom)).toBe(true);
    expect(await probeMount(bottom)).toBe('dead');
    await sh('umount', ['-l', next]);
    expect(fuseAt(next)).toBe(false);

    const again = await call(c, 'Mounts', { key: 'dead-ctr' });
    expect(again.mounts).toEqual(mounts);
    expect(fuseAt(bottom) && fuseAt(next)).toBe(true);
    expect(await probeMount(bottom)).toBe('alive');
    expect(await probeMount(next)).toBe('alive');
    const mnt = join(work, 'mnt-dead');
    await mkdir(mnt, { recursive: true });
    await sh('mount', ['-t', 'overlay', 'overlay', '-o', mounts[0].options.join(','), mnt]);
    try {
      expect((await readdir(mnt)).length).toBeGreaterThan(0);
    } finally {
      await sh('umount', [mnt]);
    }
    await call(c, 'Remove', { key: 'dead-ctr' });
    for (const chain of [...chains].reverse()) await call(c, 'Remove', { key: chain });
    expect(readMountInfo().filter((x) => x.mountpoint.startsWith(join(work, 'root')))).toEqual([]);
  });

  for (const name of ['busybox', 'multilayer'] as const) {
    it(`${name}: Prepare with CRI labels → ALREADY_EXISTS, committed lazily, view shows the files`, async () => {
      const chains = await prepareChain(name, name);
      const parent = chains.at(-1)!;
      // the layers after the first mount in the background; a View on top waits for them
      const { mounts } = await call(c, 'View', { key: `${name}-view`, parent, labels: {} });
      const fuse = readMountInfo().filter(
        (x) => x.mountpoint.startsWith(join(work, 'root')) && x.fstype.startsWith('fuse'),
      );
      expect(fuse.length).toBeGreaterThanOrEqual(chains.length);

      const mnt = join(work, `mnt-${name}`);
      await mkdir(mnt, { recursive: true });
      const mt = mounts[0];
      if (mt.type === 'bind') await sh('mount', ['--bind', mt.source, mnt]);
      else await sh('mount', ['-t', mt.type, mt.source, '-o', mt.options.join(','), mnt]);
      try {
        const entries = await readdir(mnt);
        expect(entries.length).toBeGreaterThan(0);
        if (name === 'busybox') expect(entries).toContain('bin');
      } finally {
        await sh('umount', [mnt]);
      }
      // Remove the chain top-down: every FUSE mount goes away.
      await call(c, 'Remove', { key: `${name}-view` });
      for (const chain of [...chains].reverse()) await call(c, 'Remove', { key: chain });
      const left = readMountInfo().filter((x) => x.mountpoint.startsWith(join(work, 'root')));
      expect(left).toEqual([]);
    });
  }
});
