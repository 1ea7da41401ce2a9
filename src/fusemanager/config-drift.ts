import { open } from 'node:fs/promises';
import type { Config } from '../config.js';

/**
 * The settings a running FUSE manager uses: it holds the cache, the fetches, the P2P node, the registry
 * mirror and the metrics endpoint, all set up once when it starts.
 */
const MANAGER_SETTINGS = ['cache', 'fetch', 'registry', 'p2p', 'mirror', 'node.metricsAddress'] as const;

/** Largest configuration file read back (a resolved config is a few KiB). */
const MAX_CONFIG = 1 << 20;

function pick(cfg: unknown, path: string): string {
  let v: unknown = cfg;
  for (const k of path.split('.'))
    v = v && typeof v === 'object' ? (v as Record<string, unknown>)[k] : undefined;
  return JSON.stringify(v ?? null);
}

/**
 * The settings of `wanted` that differ from those of the configuration a running manager was started with
 * (`startedWith`, as written to fuse-manager.config.json): names only, never values (tokens live there).
 */
export function settingsNotApplied(startedWith: unknown, wanted: Config): string[] {
  return MANAGER_SETTINGS.filter((s) => pick(startedWith, s) !== pick(wanted, s));
}

/**
 * Reads the configuration a running manager was started with (bounded); undefined when it cannot be read or
 * is not JSON (the caller then cannot tell, and says nothing).
 */
export async function readStartedWith(file: string): Promise<unknown> {
  let fh;
  try {
    fh = await open(file, 'r');
    const buf = Buffer.alloc(MAX_CONFIG + 1);
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0);
    if (bytesRead > MAX_CONFIG) return undefined;
    return JSON.parse(buf.subarray(0, bytesRead).toString('utf8')) as unknown;
  } catch {
    return undefined;
  } finally {
    await fh?.close();
  }
}
