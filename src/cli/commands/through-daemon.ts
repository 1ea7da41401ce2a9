import { join } from 'node:path';
import { CONTROL_SOCKET_NAME, controlSocketPath, DEFAULT_STATE_DIR } from '../../daemon/control-protocol.js';
import type { PreheatSummary } from '../../daemon/control-preheat.js';
import type { GetArgs, GetProgress } from '../../daemon/control-get.js';
import type { GetFileResult } from '../../mirror/file-get.js';
import { callControl, NoDaemon } from '../control-client.js';
import type { NodeFlags } from '../node-common.js';
import type { PreheatFlags } from './preheat.js';
import type { PullFlags } from './pull.js';

/** The flags that choose between the running daemon and this process. */
interface DaemonFlags extends NodeFlags {
  /** Skip the daemon's control socket. */
  direct?: boolean;
  controlSocket?: string;
}

/**
 * A command handed to the running `dfnode run` over its control socket: this process then loads neither gRPC
 * nor the runtime. Undefined when the command must run here instead: --direct, credentials given on the
 * command line (they are this process's, not the daemon's), or no daemon on the socket (said on stderr when
 * `sayNoDaemon`, or when the socket was named with --control-socket). Through the daemon, its registry
 * settings apply: the ones its snapshotter reads the layers with.
 */
async function throughDaemon(
  command: string,
  args: Record<string, unknown>,
  flags: DaemonFlags,
  signal: AbortSignal,
  sayNoDaemon: boolean,
  onProgress: (line: string) => void = (line) => process.stdout.write(`${line}\n`),
): Promise<{ result: unknown } | undefined> {
  if (flags.direct || flags.creds || flags.dockerConfig) return undefined;
  const socket = flags.controlSocket ?? (await configuredSocket(flags));
  if (!socket || socket === 'off') return undefined;
  try {
    const result = await callControl(socket, command, args, { signal, onProgress });
    return { result };
  } catch (err) {
    if (!(err instanceof NoDaemon)) throw err;
    if (sayNoDaemon || flags.controlSocket)
      process.stderr.write(`dfnode ${command}: ${err.message}; running it in this process instead\n`);
    return undefined;
  }
}

/** Whether the flags configure a node of this process's own (cache, P2P, metrics): it then runs here. */
function ownNode(flags: DaemonFlags & { metricsAddress?: string }): boolean {
  return [flags.cacheDir, flags.seeds, flags.p2pListen, flags.advertise, flags.clusterToken]
    .concat([flags.p2pTlsCert, flags.p2pTlsKey, flags.p2pTlsCa, flags.metricsAddress])
    .some((v) => v !== undefined);
}

/** The config file's control socket when one is given (loading the config costs zod), else the default one. */
async function configuredSocket(flags: DaemonFlags): Promise<string | undefined> {
  if (!flags.config && !process.env.DFNODE_CONFIG)
    return join(flags.stateDir ?? DEFAULT_STATE_DIR, CONTROL_SOCKET_NAME);
  const { configFrom } = await import('../node-common.js');
  return controlSocketPath(configFrom(flags).node);
}

/** `dfnode pull` through `dfnode run` (which must run anyway: it serves the snapshotter); false: run it here. */
export async function pullThroughDaemon(
  refText: string,
  flags: DaemonFlags & PullFlags,
  signal: AbortSignal,
): Promise<boolean> {
  const args = {
    ref: refText,
    address: flags.address,
    namespace: flags.namespace,
    snapshotter: flags.snapshotter,
    ...(flags.platform ? { platform: flags.platform } : {}),
  };
  return (await throughDaemon('pull', args, flags, signal, true)) !== undefined;
}

/**
 * `dfnode preheat` through `dfnode run`, into the cache its containers read (a separate process cannot open
 * that cache while the daemon holds it); false: run it here, silently when no daemon runs (a standalone
 * preheat is an ordinary use). Not with --serve or flags that configure this process's own node (cache, P2P,
 * metrics): those ask for a standalone preheat.
 */
export async function preheatThroughDaemon(
  refText: string,
  flags: DaemonFlags & PreheatFlags,
  signal: AbortSignal,
): Promise<boolean> {
  if (flags.serve || (ownNode(flags) && !flags.controlSocket)) return false;
  const r = await throughDaemon('preheat', { ref: refText }, flags, signal, false);
  if (!r) return false;
  const { preheatLine } = await import('../node-common.js');
  process.stdout.write(preheatLine(refText, r.result as PreheatSummary, flags.json));
  return true;
}

/**
 * `dfnode get` through `dfnode run`, into the cache and swarm it serves (a separate process cannot open that
 * cache while the daemon holds it); the daemon writes the file at `args.out` (absolute). undefined: run it
 * here, silently when no daemon runs. Not with --direct, registry credentials given here, or flags that
 * configure this process's own node (cache, P2P, metrics).
 */
export async function getThroughDaemon(
  args: GetArgs,
  flags: DaemonFlags,
  signal: AbortSignal,
  onProgress: (p: GetProgress) => void,
): Promise<GetFileResult | undefined> {
  if (ownNode(flags) && !flags.controlSocket) return undefined;
  const r = await throughDaemon('get', { ...args }, flags, signal, false, (line) => {
    try {
      const p = (JSON.parse(line) as { get?: GetProgress }).get;
      if (p && Number.isFinite(p.size) && Number.isFinite(p.done)) onProgress(p);
    } catch {
      // not a progress line of a get: ignored
    }
  });
  return r?.result as GetFileResult | undefined;
}
