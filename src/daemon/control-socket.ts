import { DEFAULT_CONTAINERD_ADDRESS } from '../containerd/client.js';
import type { Logger } from '../log.js';
import type { RegistryClient } from '../registry/client.js';
import { ContainerdClients, pullControlCommand, type PullHooks } from './control-pull.js';
import { preheatControlCommand } from './control-preheat.js';
import { getControlCommand } from './control-get.js';
import { ControlServer } from './control-server.js';

/**
 * `dfnode run`'s control socket with its commands (`pull`, `preheat`, `get`). The containerd protos are loaded right
 * after start, off the first request's path.
 */
export async function serveControl(
  path: string,
  log: Logger,
  registry: RegistryClient,
): Promise<{ path: string; hooks: PullHooks; stop(): Promise<void> }> {
  const clients = new ContainerdClients();
  const server = new ControlServer(path, { logger: log.child({ component: 'control' }) });
  // set by dfnode run once its snapshotter is up
  const hooks: PullHooks = {};
  server.register('pull', pullControlCommand(registry, clients, hooks));
  server.register('preheat', preheatControlCommand(hooks));
  server.register('get', getControlCommand(hooks));
  await server.listen();
  const warm = setTimeout(() => {
    try {
      clients.get(DEFAULT_CONTAINERD_ADDRESS, 'default');
    } catch (err) {
      log.warn({ err }, 'control socket: cannot load the containerd API definitions');
    }
  }, 0);
  return {
    path,
    hooks,
    stop: async () => {
      clearTimeout(warm);
      await server.stop();
      clients.close();
    },
  };
}
