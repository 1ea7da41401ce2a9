import type { Config } from '../config.js';
import { NodeMetrics } from '../daemon/metrics.js';
import { NodeRuntime } from '../daemon/node-runtime.js';
import type { ReadRecorder } from '../daemon/read-recorder.js';
import { unmountAllOnExit } from '../fuse/mounts.js';
import type { Logger } from '../log.js';
import { startMirror } from '../mirror/start-mirror.js';
import { P2pNode } from '../p2p/p2p-node.js';
import type { RegistryClient } from '../registry/client.js';
import { requireClusterToken } from './node-common.js';

/** The P2P tier of a node runtime, when seeds are configured. */
async function startP2p(cfg: Config, log: Logger): Promise<P2pNode | undefined> {
  if (!cfg.p2p.seeds.length) return undefined;
  requireClusterToken(cfg);
  const p2p = new P2pNode({ config: cfg, logger: log.child({ component: 'p2p' }) });
  const addr = await p2p.start();
  log.info({ address: addr, seeds: cfg.p2p.seeds }, 'p2p: serving blocks to peers');
  return p2p;
}

/**
 * Runs `body` with a started node runtime (cache, fetches, FUSE mounts, P2P tier when seeds are configured,
 * metrics endpoint when configured, registry mirror when `opts.mirror` and `mirror.listen`), then closes it
 * all. No mount of this process outlives it.
 */
export async function serveNode(
  cfg: Config,
  log: Logger,
  client: RegistryClient,
  body: (rt: NodeRuntime) => Promise<void>,
  opts: { recorder?: ReadRecorder; mirror?: boolean } = {},
): Promise<void> {
  const metrics = new NodeMetrics();
  const p2p = await startP2p(cfg, log);
  const rt = new NodeRuntime({ config: cfg, client, logger: log, metrics, p2p, recorder: opts.recorder });
  const removeExitHook = unmountAllOnExit(log);
  let server: Awaited<ReturnType<NodeMetrics['serve']>> | undefined;
  let mirror: Awaited<ReturnType<typeof startMirror>>;
  const writeStats = async () => {
    for (const im of rt.imageMounts()) {
      const recs = await rt.records.list();
      const rec = recs.find((r) => r.id === im.id);
      if (rec) await rt.records.write({ ...rec, stats: rt.statusSnapshot() });
    }
  };
  const statsTimer = setInterval(() => {
    writeStats().catch((err) => log.debug({ err }, 'mount record stats not written'));
  }, 1000);
  statsTimer.unref();
  try {
    await rt.start();
    if (cfg.node.metricsAddress) server = await metrics.serve(cfg.node.metricsAddress);
    // the registry mirror lives where the cache and the P2P node do (this process holds the cache's lock)
    if (opts.mirror) mirror = await startMirror(cfg, log, { caches: rt.cache, p2p });
    if (mirror) metrics.publishMirror(mirror);
    await body(rt);
  } finally {
    clearInterval(statsTimer);
    await mirror?.close();
    server?.close();
    await rt.close();
    await p2p?.close();
    removeExitHook();
    await client.close().catch(() => undefined);
  }
}
