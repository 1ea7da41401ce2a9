import { loadConfig } from '../../config.js';
import { DaemonGets } from '../../daemon/control-get.js';
import { CREDS_ENV } from '../../fusemanager/client.js';
import { FuseManagerServer } from '../../fusemanager/server.js';
import { createLogger } from '../../log.js';
import { waitForSignal } from '../node-common.js';
import { serveNode } from '../node-serve.js';
import { makeClient } from '../registry-client.js';

/** `dfnode fuse-manager` (hidden): the long-lived FUSE server that `dfnode run` starts. */
export async function fuseManagerCommand(flags: { config?: string }, signal: AbortSignal): Promise<void> {
  const cfg = loadConfig({ file: flags.config });
  const log = createLogger(cfg.logLevel).child({ component: 'fuse-manager' });
  const client = makeClient(cfg, log, process.env[CREDS_ENV]);
  delete process.env[CREDS_ENV];
  await serveNode(
    cfg,
    log,
    client,
    async (rt) => {
      const server = new FuseManagerServer({
        runtime: rt,
        stateDir: cfg.node.stateDir,
        mountRoots: [cfg.snapshotter.root, cfg.node.stateDir],
        logger: log,
        client,
        gets: new DaemonGets({ config: cfg, client, caches: rt.cache, p2p: rt.p2p, logger: log }),
      });
      try {
        await server.listen();
        await waitForSignal(
          AbortSignal.any([signal, server.shutdownSignal]),
          () => void rt.cache.gc().catch(() => undefined),
        );
        log.info({ reason: signal.aborted ? 'signal' : 'shutdown request' }, 'fuse manager stopping');
      } finally {
        await server.close();
      }
    },
    { mirror: true },
  );
}
