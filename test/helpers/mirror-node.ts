/**
 * A node for mirror tests: its cache, its P2P tier on `seed` (cluster token `token`) and the registry mirror on
 * them, in this process (what serveNode starts in the fuse manager).
 */
import { join } from 'node:path';
import { CacheManager } from '../../src/cache/cache-manager.js';
import { loadConfig, type Config } from '../../src/config.js';
import { silentLogger } from '../../src/log.js';
import { startMirror } from '../../src/mirror/start-mirror.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';

export type MirrorNode = Awaited<ReturnType<typeof startMirrorNode>>;

export async function startMirrorNode(
  dir: string,
  name: string,
  seed: string,
  token: string,
  opts: { accessTtlMs?: number; manifestTtlMs?: number; downloadRate?: string } = {},
) {
  const cfg: Config = loadConfig({
    env: {},
    flags: {
      registry: { plainHttp: true },
      cache: { dir: join(dir, `${name}-cache`) },
      mirror: {
        listen: '127.0.0.1:0',
        ...(opts.accessTtlMs === undefined ? {} : { accessTtlMs: opts.accessTtlMs }),
        ...(opts.manifestTtlMs === undefined ? {} : { manifestTtlMs: opts.manifestTtlMs }),
      },
      p2p: {
        seeds: [seed],
        clusterToken: token,
        listen: '127.0.0.1:0',
        announceIntervalMs: 200,
        ...(opts.downloadRate ? { downloadRate: opts.downloadRate } : {}),
      },
    },
  });
  const caches = CacheManager.fromConfig(cfg.cache, { logger: silentLogger });
  await caches.init();
  const p2p = new P2pNode({ config: cfg });
  await p2p.start();
  let mirror = (await startMirror(cfg, silentLogger, { caches, p2p }))!;
  let stopped: Promise<void> | undefined;
  return {
    get mirror() {
      return mirror;
    },
    p2p,
    caches,
    /** A new mirror on the same cache and P2P node (as after a restart of the node's process). */
    restartMirror: async () => {
      await mirror.close();
      mirror = (await startMirror(cfg, silentLogger, { caches, p2p }))!;
    },
    stop: () =>
      (stopped ??= (async () => {
        await mirror.close();
        await p2p.close();
        await caches.close();
      })()),
  };
}
