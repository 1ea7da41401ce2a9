import { createLogger } from '../../log.js';
import { parseReference } from '../../registry/reference.js';
import { configFrom, fmt, waitForSignal, type NodeFlags } from '../node-common.js';
import { serveNode } from '../node-serve.js';
import { makeClient } from '../registry-client.js';

/** `dfnode mount REF DIR`: serves the merged view of an image at DIR until the signal. */
export async function mountCommand(
  refText: string,
  dir: string,
  flags: NodeFlags,
  signal: AbortSignal,
): Promise<void> {
  const cfg = configFrom(flags);
  const log = createLogger(cfg.logLevel);
  const ref = parseReference(refText);
  const client = makeClient(cfg, log, flags.creds);
  await serveNode(cfg, log, client, async (rt) => {
    const im = await rt.mountImage(ref, dir, signal);
    process.stdout.write(
      `mounted ${ref} (${im.layers.length} layers, ${fmt(im.image.layers.reduce((a, l) => a + l.size, 0))}) at ${im.target}\n`,
    );
    await waitForSignal(signal, () => void rt.cache.gc().catch(() => undefined));
  });
}
