import { ContainerdClient } from '../../containerd/client.js';
import { lazyPull } from '../../containerd/pull.js';
import { createLogger } from '../../log.js';
import { parseReference } from '../../registry/reference.js';
import { configFrom, type NodeFlags } from '../node-common.js';
import { makeClient } from '../registry-client.js';

export interface PullFlags {
  address: string;
  namespace: string;
  snapshotter: string;
  platform?: string;
  /** Skip the daemon's control socket (pull-daemon.ts). */
  direct?: boolean;
  controlSocket?: string;
}

/** `dfnode pull REF`: lazy pull of a converted image into containerd (the snapshotter fetches on demand). */
export async function pullCommand(
  refText: string,
  flags: NodeFlags & PullFlags,
  signal: AbortSignal,
): Promise<void> {
  const cfg = configFrom(flags);
  const log = createLogger(cfg.logLevel);
  const client = makeClient(cfg, log, flags.creds);
  const ctd = new ContainerdClient({ address: flags.address, namespace: flags.namespace });
  try {
    await lazyPull(parseReference(refText), {
      registry: client,
      containerd: ctd,
      snapshotter: flags.snapshotter,
      platform: flags.platform,
      signal,
      onProgress: (line) => process.stdout.write(`${line}\n`),
    });
  } finally {
    ctd.close();
    await client.close().catch(() => undefined);
  }
}
