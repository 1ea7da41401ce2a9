import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { MirrorServer } from './mirror-server.js';
import { Upstream } from './upstream.js';

/** Starts the registry mirror when `mirror.listen` is set; the caller closes it. */
export async function startMirror(cfg: Config, log: Logger): Promise<MirrorServer | undefined> {
  const listen = cfg.mirror.listen;
  if (!listen || listen === 'off') return undefined;
  const upstream = new Upstream({
    plainHttp: cfg.registry.plainHttp,
    insecure: cfg.registry.insecure,
    timeoutMs: cfg.registry.timeoutMs,
  });
  const mirror = new MirrorServer({
    listen,
    upstream,
    defaultRegistry: cfg.mirror.defaultRegistry,
    registries: cfg.mirror.registries,
    manifestTtlMs: cfg.mirror.manifestTtlMs,
    staleManifestMs: cfg.mirror.staleManifestMs,
    logger: log,
    onClose: () => upstream.close(),
  });
  await mirror.start();
  log.info({ address: mirror.address }, 'registry mirror listening');
  return mirror;
}
