import { isAbsolute } from 'node:path';
import { z } from 'zod';
import type { CacheManager } from '../cache/cache-manager.js';
import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { getFile, type GetFileResult } from '../mirror/file-get.js';
import { isUrl, registrySource, urlSource } from '../mirror/file-source.js';
import { parseHeaders } from '../mirror/origin.js';
import type { P2pNode } from '../p2p/p2p-node.js';
import type { RegistryClient } from '../registry/client.js';
import type { ControlCommand } from './control-server.js';

/** Arguments of the control socket's `get` (what `dfnode get` sends): the file, where it goes, its checks. */
export const getArgs = z.strictObject({
  what: z.string().min(1).max(8192),
  out: z
    .string()
    .min(1)
    .max(4096)
    .refine((p) => isAbsolute(p), 'the output path must be absolute'),
  digest: z
    .string()
    .regex(/^sha256:[0-9a-f]{64}$/)
    .optional(),
  /** `K: V` headers for a URL's origin (credentials): to the origin and the file's seed, never to peers. */
  headers: z
    .array(z.string().max(16 * 1024))
    .max(64)
    .optional(),
});
export type GetArgs = z.infer<typeof getArgs>;

/** How far a get is: the file's size once known and the bytes held so far. */
export interface GetProgress {
  size: number;
  done: number;
}

/** Runs a get in the process that holds the node's cache (dfnode run, or its fuse manager). */
export type Getter = (
  args: GetArgs,
  signal: AbortSignal,
  progress: (p: GetProgress) => void,
) => Promise<GetFileResult>;

/** Progress lines of a get over the control socket at most this often (ms). */
const PROGRESS_EVERY_MS = 250;

/**
 * `get` over the control socket: `dfnode get` on a host where `dfnode run` holds the cache (a separate process
 * cannot open it) runs in the daemon, with its cache and P2P tier, so the file's pieces stay in the swarm
 * the daemon serves. Progress lines carry `{"get":{"size":N,"done":M}}`.
 */
export function getControlCommand(hooks: { get?: Getter }): ControlCommand<typeof getArgs> {
  return {
    args: getArgs,
    run(args, ctx): Promise<GetFileResult> {
      if (!hooks.get)
        throw new DfError(
          'FAILED_PRECONDITION',
          'this dfnode run serves no cache yet: retry once it has started',
        );
      let last = 0;
      return hooks.get(args, ctx.signal, (p) => {
        const now = Date.now();
        if (now - last < PROGRESS_EVERY_MS && p.done < p.size) return;
        last = now;
        ctx.progress(JSON.stringify({ get: p }));
      });
    },
  };
}

/**
 * The gets of a daemon: each through the daemon's P2P tier and cache (getFile's `cluster`), without P2P
 * directly from the origin; one get of a file at a time (a blob joins the swarm once: the next one waits and
 * then finds the pieces in the cache). `active` is what they have done so far (the fuse manager's
 * `GET /gets`).
 */
export class DaemonGets {
  private readonly running = new Map<string, Promise<unknown>>();
  private nextId = 0;
  readonly active = new Map<number, GetProgress & { out: string }>();

  constructor(
    private readonly deps: {
      config: Config;
      client: RegistryClient;
      caches: CacheManager;
      p2p?: P2pNode;
      logger?: Logger;
    },
  ) {}

  readonly get: Getter = async (args, signal, progress) => {
    const cfg = this.deps.config;
    const source = isUrl(args.what)
      ? urlSource(args.what, parseHeaders(args.headers ?? []), args.digest, cfg.fetch.requestTimeoutMs)
      : registrySource(args.what, this.deps.client, args.digest);
    if (!isUrl(args.what) && args.headers?.length)
      throw DfError.invalidArgument('headers are for URLs; registry blobs use the daemon’s credentials');
    const before = this.running.get(source.key);
    const mine = (async () => {
      await before?.catch(() => undefined);
      const id = this.nextId++;
      const p: GetProgress & { out: string } = { out: args.out, size: 0, done: 0 };
      this.active.set(id, p);
      try {
        const p2p = this.deps.p2p;
        return await getFile({
          source,
          out: args.out,
          // without a P2P tier: no seeds, so the file comes from the origin (the daemon's cache stays its own)
          config: p2p ? cfg : { ...cfg, p2p: { ...cfg.p2p, seeds: [] } },
          signal,
          ...(this.deps.logger && { logger: this.deps.logger }),
          ...(p2p && { cluster: { p2p, caches: this.deps.caches } }),
          onStart: (size, already) => {
            p.size = size;
            p.done = already;
            progress({ size, done: already });
          },
          onBytes: (n) => {
            p.done += n;
            progress({ size: p.size, done: p.done });
          },
        });
      } finally {
        this.active.delete(id);
      }
    })();
    this.running.set(source.key, mine);
    try {
      return await mine;
    } finally {
      if (this.running.get(source.key) === mine) this.running.delete(source.key);
    }
  };
}
