import { z } from 'zod';
import { ContainerdClient, DEFAULT_CONTAINERD_ADDRESS } from '../containerd/client.js';
import { lazyPull, type LazyPullOptions, type LazyPullResult } from '../containerd/pull.js';
import type { RegistryClient } from '../registry/client.js';
import { parseReference } from '../registry/reference.js';
import type { Getter } from './control-get.js';
import type { Preheater } from './control-preheat.js';
import type { ControlCommand } from './control-server.js';

/** Arguments of the control socket's `pull` (what `dfnode pull` sends). */
export const pullArgs = z.strictObject({
  ref: z.string().min(1).max(1024),
  /** containerd's socket path. */
  address: z.string().min(1).max(1024).default(DEFAULT_CONTAINERD_ADDRESS),
  namespace: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,75}$/, 'a containerd namespace')
    .default('default'),
  snapshotter: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,75}$/, 'a snapshotter name')
    .default('dfnode'),
  platform: z.string().max(64).optional(),
});

/**
 * containerd clients by socket and namespace, kept open between pulls (the daemon's warm connection is what
 * makes a pull through the control socket cheap); at most `max`, the oldest closed first.
 */
export class ContainerdClients {
  private readonly clients = new Map<string, ContainerdClient>();

  constructor(private readonly max = 8) {}

  get(address: string, namespace: string): ContainerdClient {
    const key = `${address}\0${namespace}`;
    let c = this.clients.get(key);
    if (c) {
      this.clients.delete(key);
      this.clients.set(key, c);
      return c;
    }
    c = new ContainerdClient({ address, namespace });
    this.clients.set(key, c);
    if (this.clients.size > this.max) {
      const [oldKey, old] = this.clients.entries().next().value!;
      this.clients.delete(oldKey);
      old.close();
    }
    return c;
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}

/**
 * `pull` over the control socket: the same lazyPull as `dfnode pull`'s direct path, with the daemon's registry
 * client (the one its snapshotter reads the layers with) and a kept containerd connection.
 */
/** What the snapshotter side of `dfnode run` does once a pull has resolved its image (see LazyPullOptions). */
export interface PullHooks {
  onResolved?: LazyPullOptions['onResolved'];
  /** Where `preheat` runs (see control-preheat.ts). */
  preheat?: Preheater;
  /** Where `get` runs (see control-get.ts). */
  get?: Getter;
}

export function pullControlCommand(
  registry: RegistryClient,
  clients: ContainerdClients,
  hooks: PullHooks = {},
): ControlCommand<typeof pullArgs> {
  return {
    args: pullArgs,
    async run(args, ctx): Promise<LazyPullResult> {
      const ctd = clients.get(args.address, args.namespace);
      return lazyPull(parseReference(args.ref), {
        registry,
        containerd: ctd,
        snapshotter: args.snapshotter,
        platform: args.platform,
        signal: ctx.signal,
        onProgress: ctx.progress,
        onResolved: hooks.onResolved,
      });
    },
  };
}
