import type { Config } from '../config.js';
import type { Logger } from '../log.js';
import { RegistryClient } from '../registry/client.js';
import { chainCredentials, DockerConfigCredentials, StaticCredentials } from '../registry/credentials.js';
import { CONVERTER_VERSION } from '../../converter/version.js';

/** The registry client of a dfnode command: `creds` (user:password) first, then the docker config file. */
export function makeClient(cfg: Config, log: Logger, creds: string | undefined): RegistryClient {
  // The fetch layer retries across attempts and sources and bounds each read: keep the client's own
  // retries short so that an unreachable registry gives EIO within the read timeout.
  return new RegistryClient({
    plainHttp: cfg.registry.plainHttp,
    insecure: cfg.registry.insecure,
    timeoutMs: Math.min(cfg.registry.timeoutMs, cfg.fetch.requestTimeoutMs),
    retries: 1,
    retryBaseMs: 100,
    retryMaxMs: 1000,
    logger: log,
    userAgent: `dfnode/${CONVERTER_VERSION}`,
    credentials: chainCredentials(
      creds ? StaticCredentials.fromString(creds) : undefined,
      new DockerConfigCredentials({ path: cfg.registry.dockerConfig, logger: log }),
    ),
  });
}
