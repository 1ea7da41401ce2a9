// The demo's last part: a container from the lazily pulled converted image, under a private containerd + runc
// with dfnode's snapshotter (`dfnode run`, a child) whose blocks come through a seed embedded in this process.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadConfig } from '../config.js';
import { DfError } from '../errors.js';
import { mountsBelow } from '../fuse/mounts.js';
import { SeedFiles } from '../mirror/seed-files.js';
import { Seed } from '../p2p/seed.js';
import { registryAllowed } from '../p2p/seed-registries.js';
import { startSeedManifests } from '../mirror/seed-manifests.js';
import { silentLogger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import { freeLoopbackPort } from '../util/free-port.js';
import { demoThroughMirror } from './demo-mirror.js';
import { missingForPrivateNode, PrivateNode, type PrivateNodeOptions } from './private-node.js';

/** What the container part of the demo needs that this machine lacks (empty: all there). */
export function missingForDemoContainer(): string[] {
  const missing = missingForPrivateNode();
  // the image's command is busybox's cat (the demo image copies the host's busybox-static)
  if (!existsSync('/bin/busybox')) missing.push('/bin/busybox (busybox-static)');
  return missing;
}

export interface DemoContainerOptions {
  /** A directory of the demo's (removed by it). */
  work: string;
  /** host:port of the embedded (plain HTTP) registry. */
  registryHost: string;
  /** The converted image. */
  ref: string;
  /** The unconverted image it was converted from (pulled through the mirror). */
  plainRef: string;
  /** Bytes of its layers. */
  plainBytes: number;
  /** Bytes of the converted image's layers (for the share read). */
  imageBytes: number;
  client: RegistryClient;
  out: (line: string) => void;
  signal: AbortSignal;
}

const inUse = (err: unknown) => err instanceof Error && /address .* is in use/.test(err.message);

/** `start` on a free loopback port; another port when that one was taken meanwhile. */
async function onFreePort<T>(start: (port: number) => Promise<T>): Promise<T> {
  for (let tries = 0; ; tries++) {
    try {
      return await start(await freeLoopbackPort());
    } catch (err) {
      if (!inUse(err) || tries >= 4) throw err;
    }
  }
}

/** The seed: blocks on 127.0.0.1:PORT, its tracker on PORT+1. */
async function startSeed(o: DemoContainerOptions, token: string): Promise<{ seed: Seed; address: string }> {
  return onFreePort(async (port) => {
    const cfg = loadConfig({
      flags: {
        registry: { insecure: [o.registryHost] },
        cache: { dir: join(o.work, 'seed-cache') },
        node: { stateDir: join(o.work, 'seed-state'), metricsAddress: '' },
        p2p: { listen: `127.0.0.1:${port}`, clusterToken: token, seedRegistries: [o.registryHost] },
      },
    });
    const seed = new Seed({
      config: cfg,
      client: o.client,
      // manifests for the nodes' mirrors (as `dfnode seed` has them)
      manifests: startSeedManifests(cfg, silentLogger, (registry) =>
        registryAllowed(cfg.p2p.seedRegistries, { registry }),
      ),
      // blobs of unconverted images for the nodes' registry mirrors (as `dfnode seed` has them)
      files: (deps) =>
        new SeedFiles({
          ...deps,
          origins: [],
          registry: { client: o.client, allowed: (ref) => registryAllowed(cfg.p2p.seedRegistries, ref) },
          idleTimeoutMs: 60_000,
        }),
    });
    try {
      const a = await seed.start();
      return { seed, address: a.blocks };
    } catch (err) {
      await seed.close().catch(() => undefined);
      throw err;
    }
  });
}

/** Block bytes by source from a node's Prometheus text (dfnode_bytes_total{source}). */
export function bytesBySource(metrics: string): Record<string, number> {
  const by: Record<string, number> = {};
  for (const m of metrics.matchAll(/^dfnode_bytes_total\{source="(\w+)"\} (\S+)$/gm))
    by[m[1]!] = Number(m[2]);
  return by;
}

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;

/**
 * Starts the seed and the private node, `dfnode pull`s the converted image (lazily), runs the image's own
 * command in a container with `ctr run`, prints its output and what the run read (block bytes by source, share
 * of the image); then pulls the unconverted image through the node's registry mirror and runs it too
 * (demo-mirror.ts); then stops everything (also on error and Ctrl-C).
 */
export async function runDemoContainer(o: DemoContainerOptions): Promise<void> {
  const token = randomBytes(16).toString('hex');
  let seed: Seed | undefined;
  let node: PrivateNode | undefined;
  let step = 14;
  try {
    const s = await startSeed(o, token);
    seed = s.seed;
    o.out(`9. seed on ${s.address} (in this process), fetching from ${o.registryHost}`);
    let metricsAddress = '';
    let mirror = '';
    node = await onFreePort(async (port) => {
      metricsAddress = `127.0.0.1:${port}`;
      // the mirror on another free port (either taken meanwhile: both chosen again)
      mirror = `127.0.0.1:${await freeLoopbackPort()}`;
      const nodeOpts: PrivateNodeOptions = {
        work: join(o.work, 'node'),
        config: {
          registry: { insecure: [o.registryHost] },
          // the run's own reads only, so that the share read below is what the container needed
          fetch: { backgroundFill: false },
          node: { metricsAddress },
          mirror: { listen: mirror },
          p2p: { seeds: [s.address], clusterToken: token, listen: '127.0.0.1:0' },
        },
        namespace: 'dfnode-demo',
        signal: o.signal,
      };
      return PrivateNode.start(nodeOpts);
    });
    o.out(
      `10. dfnode run (pid ${node.nodePid}, snapshotter, seed ${s.address}) and a private containerd ` +
        `(pid ${node.containerd.pid}) under ${join(o.work, 'node')}`,
    );
    let t0 = Date.now();
    await node.pull(o.ref);
    o.out(`11. dfnode pull ${o.ref}: ${Date.now() - t0} ms (manifest, config and TOCs only)`);
    t0 = Date.now();
    const run = await node.run(o.ref, `dfnode-demo-${process.pid}`, [], 120);
    if (run.code !== 0)
      throw new DfError(
        'INTERNAL',
        `the container ${run.timedOut ? 'did not finish within 120 s' : `exited with ${run.code ?? 'a signal'}`}: ${run.stderr}`,
      );
    o.out(
      `12. ctr run --snapshotter dfnode (the image's command, runc): exit 0 in ${Date.now() - t0} ms; it printed:`,
    );
    for (const line of run.stdout.trimEnd().split('\n')) o.out(`      | ${line}`);
    const res = await fetch(`http://${metricsAddress}/metrics`, { signal: o.signal });
    if (!res.ok) throw new DfError('INTERNAL', `dfnode run's metrics answered ${res.status}`);
    const by = bytesBySource(await res.text());
    const remote = (by.seed ?? 0) + (by.peer ?? 0) + (by.registry ?? 0);
    o.out(
      `13. the run read ${kib(remote)} of blocks: ${kib(by.seed ?? 0)} through the seed, ${kib(by.registry ?? 0)} ` +
        `from the registry directly, ${kib(by.peer ?? 0)} from peers = ${((100 * remote) / o.imageBytes).toFixed(1)}% ` +
        `of the ${(o.imageBytes / 1e6).toFixed(1)} MB converted image; the seed has fetched ` +
        `${kib(seed.stats.bytes.registry)} from the registry (it keeps full copies for the cluster)`,
    );
    step = await demoThroughMirror({
      node,
      mirror,
      metricsAddress,
      ref: o.plainRef,
      imageBytes: o.plainBytes,
      registryHost: o.registryHost,
      dir: join(o.work, 'mirror'),
      step: 14,
      out: o.out,
      signal: o.signal,
    });
  } finally {
    await node?.close();
    await seed?.close().catch(() => undefined);
  }
  const left = mountsBelow(o.work);
  if (left.length) throw new DfError('INTERNAL', `still mounted after the stop: ${left.join(', ')}`);
  o.out(`${step}. stopped containerd, dfnode run and the seed; nothing left mounted`);
}
