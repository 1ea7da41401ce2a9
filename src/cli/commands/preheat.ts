import { createLogger } from '../../log.js';
import { preheat } from '../../layer/preheat.js';
import { parseReference } from '../../registry/reference.js';
import { configFrom, preheatLine, waitForSignal, type NodeFlags } from '../node-common.js';
import { serveNode } from '../node-serve.js';
import { makeClient } from '../registry-client.js';

export interface PreheatFlags extends NodeFlags {
  serve?: boolean;
  /** Skip the daemon's control socket (through-daemon.ts). */
  direct?: boolean;
  controlSocket?: string;
}

/** `dfnode preheat REF`: every block of an image into this node's cache (peers, seeds, registry), then exit. */
export async function preheatCommand(
  refText: string,
  flags: PreheatFlags,
  signal: AbortSignal,
): Promise<void> {
  const cfg = configFrom(flags);
  cfg.fetch.backgroundFill = false;
  cfg.node.metricsAddress = flags.metricsAddress ?? '';
  // no FUSE mounts, so no container reads to attribute: no containerd client (and its protos) to load
  cfg.node.containerdAddress = '';
  const log = createLogger(cfg.logLevel);
  const ref = parseReference(refText);
  const client = makeClient(cfg, log, flags.creds);
  await serveNode(cfg, log, client, async (rt) => {
    const r = await preheat(rt.layers, client, ref, { signal, logger: log });
    try {
      process.stdout.write(preheatLine(String(ref), r, flags.json));
      if (flags.serve) await waitForSignal(signal);
    } finally {
      await r.release();
    }
  });
}
