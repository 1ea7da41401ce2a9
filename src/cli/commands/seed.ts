import { configGives } from '../../config.js';
import { NodeMetrics } from '../../daemon/metrics.js';
import { createLogger } from '../../log.js';
import { SeedFiles } from '../../mirror/seed-files.js';
import { startMirror } from '../../mirror/start-mirror.js';
import { startSeedManifests } from '../../mirror/seed-manifests.js';
import { SeedMirrorBlobs } from '../../mirror/seed-mirror-blobs.js';
import { Seed } from '../../p2p/seed.js';
import { registryAllowed } from '../../p2p/seed-registries.js';
import { configFrom, waitForSignal, type NodeFlags } from '../node-common.js';
import { makeClient } from '../registry-client.js';

/** `dfnode seed`: full copies of blobs, block server and tracker, until the signal. */
export async function seedCommand(flags: NodeFlags, signal: AbortSignal): Promise<void> {
  const cfg = configFrom(flags);
  const log = createLogger(cfg.logLevel);
  const client = makeClient(cfg, log, flags.creds);
  // manifests for the nodes' mirrors, from the registries the seed fetches blobs from
  const manifests = startSeedManifests(cfg, log, (registry) =>
    registryAllowed(cfg.p2p.seedRegistries, { registry }),
  );
  const seed = new Seed({
    manifests,
    config: cfg,
    client,
    logger: log.child({ component: 'seed' }),
    // raw files for `dfnode get`, from the origins p2p.seedOrigins allows
    files: (deps) =>
      new SeedFiles({
        ...deps,
        origins: cfg.p2p.seedOrigins,
        registry: { client, allowed: (ref) => registryAllowed(cfg.p2p.seedRegistries, ref) },
        idleTimeoutMs: Math.max(cfg.fetch.requestTimeoutMs, cfg.p2p.seedTimeoutMs) * 2,
      }),
  });
  const metrics = new NodeMetrics();
  metrics.onScrape(() => {
    metrics.publishSeed(seed.metricsCounters);
    metrics.publishBlockServer(seed.counters);
    metrics.publishSeedManifests(manifests.relay.counters);
  });
  let server: Awaited<ReturnType<NodeMetrics['serve']>> | undefined;
  let mirror: Awaited<ReturnType<typeof startMirror>>;
  try {
    const a = await seed.start();
    // --metrics-address, else node.metricsAddress of the config file or DFNODE_NODE_METRICS_ADDRESS; a seed
    // given neither serves no metrics (the node's default port would collide with a node on the same host)
    const address =
      flags.metricsAddress !== undefined || configGives(['node', 'metricsAddress'], { file: flags.config })
        ? cfg.node.metricsAddress
        : '';
    if (address) server = await metrics.serve(address);
    // blobs from the seed's own files: a pull-through cache for hosts pointed at the seed's mirror
    const blobs = seed.files && new SeedMirrorBlobs(seed.files);
    mirror = await startMirror(cfg, log, undefined, { manifests: manifests.relay, blobs });
    if (mirror) metrics.publishMirror(mirror);
    log.info({ ...a, metrics: address }, 'dfnode seed running');
    process.stdout.write(`seed serving blocks on ${a.blocks}, tracker on ${a.tracker}\n`);
    await waitForSignal(signal);
  } finally {
    await mirror?.close();
    server?.close();
    await seed.close();
    await client.close().catch(() => undefined);
  }
}
