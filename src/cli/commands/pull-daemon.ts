import { CONTROL_SOCKET_NAME, controlSocketPath, DEFAULT_STATE_DIR } from '../../daemon/control-protocol.js';
import { callControl, NoDaemon } from '../control-client.js';
import type { NodeFlags } from '../node-common.js';
import type { PullFlags } from './pull.js';

/**
 * `dfnode pull` handed to the running `dfnode run` over its control socket: this process then loads neither
 * gRPC nor the registry client. Returns false when the direct path must run instead: --direct, credentials
 * given on the command line (they are this process's, not the daemon's), or no daemon on the socket (said on
 * stderr). Through the daemon, its registry settings apply: the ones its snapshotter reads the layers with.
 */
export async function pullThroughDaemon(
  refText: string,
  flags: NodeFlags & PullFlags,
  signal: AbortSignal,
): Promise<boolean> {
  if (flags.direct || flags.creds || flags.dockerConfig) return false;
  const socket = flags.controlSocket ?? (await configuredSocket(flags));
  if (!socket || socket === 'off') return false;
  try {
    await callControl(
      socket,
      'pull',
      {
        ref: refText,
        address: flags.address,
        namespace: flags.namespace,
        snapshotter: flags.snapshotter,
        ...(flags.platform ? { platform: flags.platform } : {}),
      },
      { signal, onProgress: (line) => process.stdout.write(`${line}\n`) },
    );
    return true;
  } catch (err) {
    if (!(err instanceof NoDaemon)) throw err;
    process.stderr.write(`dfnode pull: ${err.message}; pulling from this process instead\n`);
    return false;
  }
}

/** The config file's control socket when one is given (loading the config costs zod), else the default one. */
async function configuredSocket(flags: NodeFlags): Promise<string | undefined> {
  if (!flags.config && !process.env.DFNODE_CONFIG) return `${DEFAULT_STATE_DIR}/${CONTROL_SOCKET_NAME}`;
  const { configFrom } = await import('../node-common.js');
  return controlSocketPath(configFrom(flags).node);
}
