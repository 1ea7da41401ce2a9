import { createLogger } from '../../log.js';
import { preheat } from '../../layer/preheat.js';
import { parseReference } from '../../registry/reference.js';
import { configFrom, fmt, waitForSignal, type NodeFlags } from '../node-common.js';
import { serveNode } from '../node-serve.js';
import { makeClient } from '../registry-client.js';

export interface PreheatFlags extends NodeFlags {
  serve?: boolean;
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
  const log = createLogger(cfg.logLevel);
  const ref = parseReference(refText);
  const client = makeClient(cfg, log, flags.creds);
  await serveNode(cfg, log, client, async (rt) => {
    const r = await preheat(rt.layers, client, ref, { signal, logger: log });
    try {
      const b = r.bySource;
      process.stdout.write(
        flags.json
          ? JSON.stringify(r) + '\n'
          : `preheated ${ref}: ${r.layers} layers, ${fmt(r.bytes)}; from peers ${fmt(b.peer)}, seeds ${fmt(b.seed)}, ` +
              `registry ${fmt(b.registry)}, cache ${fmt(b.cache)}\n`,
      );
      if (flags.serve) await waitForSignal(signal);
    } finally {
      await r.release();
    }
  });
}
