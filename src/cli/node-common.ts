import { resolve } from 'node:path';
import { loadConfig, type Config } from '../config.js';
import { DfError } from '../errors.js';
import { resolveClusterToken } from '../p2p/auth.js';

/** The flags that dfnode's commands share (each command declares the ones it takes). */
export interface NodeFlags {
  config?: string;
  plainHttp?: boolean;
  insecure?: string[];
  creds?: string;
  dockerConfig?: string;
  cacheDir?: string;
  stateDir?: string;
  logLevel?: string;
  metricsAddress?: string;
  fillRate?: string;
  readTimeout?: string;
  json?: boolean;
  seeds?: string;
  clusterToken?: string;
  p2pListen?: string;
  advertise?: string;
  p2pTlsCert?: string;
  p2pTlsKey?: string;
  p2pTlsCa?: string;
}

/** The configuration of a command: config file (or DFNODE_CONFIG), environment, then these flags. */
export function configFrom(flags: NodeFlags): Config {
  const top: Record<string, any> = { registry: {}, cache: {}, node: {}, fetch: {} };
  if (flags.plainHttp) top.registry.plainHttp = true;
  if (flags.insecure) top.registry.insecure = flags.insecure;
  if (flags.dockerConfig) top.registry.dockerConfig = flags.dockerConfig;
  if (flags.cacheDir) top.cache.dir = resolve(flags.cacheDir);
  if (flags.stateDir) top.node.stateDir = resolve(flags.stateDir);
  if (flags.metricsAddress !== undefined) top.node.metricsAddress = flags.metricsAddress;
  if (flags.fillRate !== undefined) top.fetch.fillRate = flags.fillRate;
  if (flags.readTimeout !== undefined) {
    const ms = Number(flags.readTimeout);
    if (!Number.isInteger(ms) || ms <= 0)
      throw DfError.invalidArgument(`--read-timeout must be milliseconds, got ${flags.readTimeout}`);
    top.fetch.readTimeoutMs = ms;
  }
  if (flags.logLevel) top.logLevel = flags.logLevel;
  top.p2p = {};
  if (flags.seeds !== undefined)
    top.p2p.seeds = flags.seeds
      .split(',')
      .map((x) => x.trim())
      .filter(Boolean);
  if (flags.clusterToken !== undefined) top.p2p.clusterToken = flags.clusterToken;
  if (flags.p2pListen !== undefined) top.p2p.listen = flags.p2pListen;
  if (flags.advertise !== undefined) top.p2p.advertise = flags.advertise;
  const tls = { cert: flags.p2pTlsCert, key: flags.p2pTlsKey, ca: flags.p2pTlsCa };
  for (const [k, v] of Object.entries(tls)) if (v) (top.p2p.tls ??= {})[k] = resolve(v);
  return loadConfig({ file: flags.config, flags: top });
}

/**
 * A node with seeds needs the cluster token: the seeds (and peers) refuse requests without it, so such a node
 * would run without P2P, silently. A CONFIG error (exit code 2) at start instead.
 */
export function requireClusterToken(cfg: Config): void {
  if (!cfg.p2p.seeds.length) return;
  if (resolveClusterToken(cfg.p2p)) return;
  throw new DfError(
    'CONFIG',
    `p2p.seeds is set (${cfg.p2p.seeds.join(', ')}) but the cluster token is empty: set p2p.clusterToken, ` +
      'p2p.clusterTokenFile or DFNODE_P2P_CLUSTER_TOKEN (the seeds refuse nodes without it), or remove the seeds',
  );
}

/** Resolves when `signal` aborts; `extra` runs on each SIGUSR2 meanwhile (dfnode gc asks a cache holder to collect). */
export function waitForSignal(signal: AbortSignal, extra?: (sig: NodeJS.Signals) => void): Promise<void> {
  return new Promise((resolveWait) => {
    if (signal.aborted) return resolveWait();
    signal.addEventListener('abort', () => resolveWait(), { once: true });
    if (extra) process.on('SIGUSR2', () => extra('SIGUSR2'));
  });
}

/** What `dfnode preheat` prints (here or through the daemon). */
export function preheatLine(
  ref: string,
  r: { layers: number; bytes: number; bySource: Record<'peer' | 'seed' | 'registry' | 'cache', number> },
  json?: boolean,
): string {
  const b = r.bySource;
  return json
    ? JSON.stringify(r) + '\n'
    : `preheated ${ref}: ${r.layers} layers, ${fmt(r.bytes)}; from peers ${fmt(b.peer)}, seeds ${fmt(b.seed)}, ` +
        `registry ${fmt(b.registry)}, cache ${fmt(b.cache)}\n`;
}

export function fmt(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e3).toFixed(1)} kB`;
}
