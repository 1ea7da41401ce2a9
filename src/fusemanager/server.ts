import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmod, mkdir, mkdtemp, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Toc } from '../blob/toc.js';
import { preheatHere } from '../daemon/control-preheat.js';
import { getArgs, type DaemonGets } from '../daemon/control-get.js';
import type { NodeRuntime, MountedLayer } from '../daemon/node-runtime.js';
import type { RegistryClient } from '../registry/client.js';
import { DfError } from '../errors.js';
import { isFuseType, readMountInfo } from '../fuse/mounts.js';
import { silentLogger, type Logger } from '../log.js';
import { parseReference, type ImageReference } from '../registry/reference.js';
import { socketServed } from '../snapshotter/socket-file.js';
import { MountRoots } from './mount-roots.js';
import {
  FUSE_MANAGER_API_VERSION,
  fuseManagerPaths,
  mountRequestSchema,
  preheatRequestSchema,
  warmRequestSchema,
  releaseRequestSchema,
  type Health,
  type ManagedLayer,
  type ManagedMount,
} from './protocol.js';

interface Entry {
  info: ManagedMount;
  mounted: MountedLayer;
}

export interface FuseManagerServerOptions {
  runtime: NodeRuntime;
  stateDir: string;
  /** The only directories layers are mounted under (the snapshotter root, the state directory). */
  mountRoots: string[];
  logger?: Logger;
  /** The registry client `POST /preheat` resolves images with (without it, preheat is refused). */
  client?: RegistryClient;
  /** `dfnode get` through `dfnode run` (`POST /get`, `GET /gets`); without it, refused. */
  gets?: DaemonGets;
}

const MAX_BODY = 1 << 20;
/** Bounds on a client: the whole request (headers and body) must arrive within these. */
const HEADERS_TIMEOUT_MS = 10_000;
const REQUEST_TIMEOUT_MS = 30_000;
const MAX_CONNECTIONS = 64;

/**
 * The long-lived process that owns the FUSE mounts of remote layers (and the cache behind them), so that
 * `dfnode run` can restart without breaking running containers. Mounts are made and released on request of
 * the snapshotter over the control socket; nothing here is persisted: when this process dies its mounts die
 * with it (ENOTCONN), and the next `dfnode run` cleans them and mounts again.
 */
export class FuseManagerServer {
  private readonly rt: NodeRuntime;
  private readonly log: Logger;
  private readonly paths: ReturnType<typeof fuseManagerPaths>;
  private readonly entries = new Map<string, Entry>();
  /** Operations on one mountpoint run one after the other. */
  private readonly chains = new Map<string, Promise<unknown>>();
  private readonly started = Date.now();
  private server?: Server;
  private closing?: Promise<void>;
  private readonly shutdownRequested = new AbortController();
  private readonly roots: MountRoots;
  private readonly client?: RegistryClient;

  constructor(private readonly opts: FuseManagerServerOptions) {
    this.rt = opts.runtime;
    this.client = opts.client;
    this.roots = new MountRoots(opts.mountRoots);
    this.log = opts.logger ?? silentLogger;
    this.paths = fuseManagerPaths(opts.stateDir);
  }

  /** Aborted when a client asks for a shutdown. */
  get shutdownSignal(): AbortSignal {
    return this.shutdownRequested.signal;
  }

  get socketPath(): string {
    return this.paths.socket;
  }

  /**
   * Listens on the control socket, mode 0600 (mounting is root's business), and writes the pid file. The
   * socket is bound in a fresh 0700 directory, made 0600 and only then moved to its path: no moment where
   * anyone else can connect. A socket file nobody serves (a crash) is replaced; one a live process serves is
   * a FAILED_PRECONDITION.
   */
  async listen(): Promise<void> {
    const dir = dirname(this.paths.socket);
    await mkdir(dir, { recursive: true });
    if (await socketServed(this.paths.socket))
      throw new DfError(
        'FAILED_PRECONDITION',
        `fuse manager socket ${this.paths.socket} is served by another process; stop that fuse manager first`,
      );
    const server = createServer((req, res) => {
      this.handle(req, res).catch((err: unknown) => {
        this.log.warn({ err }, 'fuse manager: request handler failed');
        res.destroy();
      });
    });
    server.headersTimeout = HEADERS_TIMEOUT_MS;
    server.requestTimeout = REQUEST_TIMEOUT_MS;
    server.maxConnections = MAX_CONNECTIONS;
    server.on('clientError', (_err, socket) => {
      if (socket.writable && !socket.writableEnded)
        socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
      else socket.destroy();
    });
    const priv = await mkdtemp(join(dir, '.fm-'));
    try {
      const tmpSocket = join(priv, 's');
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(tmpSocket, () => {
          server.off('error', reject);
          resolve();
        });
      });
      await chmod(tmpSocket, 0o600);
      await rm(this.paths.socket, { force: true });
      await rename(tmpSocket, this.paths.socket);
    } catch (err) {
      server.close();
      throw DfError.from(err, `fuse manager: listen on ${this.paths.socket}`);
    } finally {
      await rm(priv, { recursive: true, force: true }).catch(() => undefined);
    }
    server.on('error', (err) => this.log.error({ err }, 'fuse manager: control socket error'));
    this.server = server;
    await writeFile(this.paths.pid, `${process.pid}\n`);
    this.log.info({ socket: this.paths.socket, pid: process.pid }, 'fuse manager listening');
  }

  /** Unmounts every layer, stops listening and removes the socket and pid files. Idempotent. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const server = this.server;
      if (server) {
        server.close();
        server.closeAllConnections();
      }
      await Promise.allSettled([...this.chains.values()]);
      for (const mp of [...this.entries.keys()]) await this.release(mp);
      await rm(this.paths.socket, { force: true }).catch(() => undefined);
      await rm(this.paths.pid, { force: true }).catch(() => undefined);
      this.log.info('fuse manager stopped');
    })();
    return this.closing;
  }

  private serial<T>(mountpoint: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.chains.get(mountpoint) ?? Promise.resolve();
    const p = prev.then(fn, fn);
    const tail = p.catch(() => undefined);
    this.chains.set(mountpoint, tail);
    void tail.then(() => {
      if (this.chains.get(mountpoint) === tail) this.chains.delete(mountpoint);
    });
    return p;
  }

  /** Entries whose mount is gone (unmounted by someone else) are released. */
  private async prune(): Promise<void> {
    const live = new Set(
      readMountInfo()
        .filter((m) => isFuseType(m.fstype))
        .map((m) => m.mountpoint),
    );
    for (const mp of [...this.entries.keys()]) {
      if (live.has(mp)) continue;
      this.log.warn({ mountpoint: mp }, 'fuse manager: a layer mount disappeared; releasing it');
      await this.serial(mp, () => this.release(mp));
    }
  }

  async list(): Promise<ManagedMount[]> {
    await this.prune();
    return [...this.entries.values()].map((e) => ({ ...e.info }));
  }

  health(): Health {
    return {
      ok: true,
      pid: process.pid,
      version: FUSE_MANAGER_API_VERSION,
      mounts: this.entries.size,
      uptimeSec: Math.round((Date.now() - this.started) / 1000),
    };
  }

  /** Mounts `layer` at `mountpoint`; the same layer already mounted there is answered as is. */
  async mount(body: unknown, signal?: AbortSignal): Promise<ManagedMount> {
    const req = mountRequestSchema.parse(body);
    await this.roots.check(req.mountpoint);
    return this.serial(req.mountpoint, async () => {
      if (this.closing) throw new DfError('FAILED_PRECONDITION', 'fuse manager is shutting down');
      const old = this.entries.get(req.mountpoint);
      if (old) {
        const live = readMountInfo().some((m) => m.mountpoint === req.mountpoint && isFuseType(m.fstype));
        if (live && old.info.digest === req.layer.digest) return { ...old.info };
        await this.release(req.mountpoint);
      }
      const ref = parseReference(req.imageRef);
      const lowerTocs = await this.lowerTocs(req.imageRef, req.lowerLayers, signal);
      const mounted = await this.rt.mountLayer(ref, asDfbLayer(req.layer), req.mountpoint, {
        lowerTocs,
        signal,
      });
      const info: ManagedMount = {
        mountpoint: req.mountpoint,
        imageRef: req.imageRef,
        digest: req.layer.digest,
        since: new Date().toISOString(),
      };
      this.entries.set(req.mountpoint, { info, mounted });
      this.log.info(
        { mountpoint: req.mountpoint, layer: req.layer.digest, image: req.imageRef },
        'layer mounted',
      );
      return { ...info };
    });
  }

  /**
   * TOCs of the lower layers, from the layer store: an open layer's own, else read through the cache (footer
   * and TOC are cached with the blob, so this is local after the first time) without opening the layer.
   */
  private async lowerTocs(
    imageRef: string,
    lower: ManagedLayer[],
    signal?: AbortSignal,
  ): Promise<Toc[] | undefined> {
    if (!lower.length) return undefined;
    const tocs: Toc[] = [];
    for (const l of lower)
      tocs.push(await this.rt.layers.readToc(asDfbLayer(l), parseReference(imageRef), signal));
    return tocs;
  }

  /** Unmounts and releases the layer at `mountpoint`; false when this process serves none there. */
  private async release(mountpoint: string): Promise<boolean> {
    const e = this.entries.get(mountpoint);
    if (!e) return false;
    this.entries.delete(mountpoint);
    await this.rt.releaseLayer(e.mounted);
    this.log.info({ mountpoint, layer: e.info.digest }, 'layer released');
    return true;
  }

  // ------------------------------------------------------------------------------- HTTP

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const ac = new AbortController();
    res.once('close', () => {
      if (!res.writableFinished) ac.abort(DfError.aborted('fuse manager client went away'));
    });
    try {
      const route = `${req.method} ${req.url}`;
      let out: unknown;
      switch (route) {
        case 'GET /health':
          out = this.health();
          break;
        case 'GET /mounts':
          out = { mounts: await this.list() };
          break;
        case 'POST /mount':
          out = await this.mount(await readJson(req), ac.signal);
          break;
        case 'POST /release': {
          const { mountpoint } = releaseRequestSchema.parse(await readJson(req));
          out = { released: await this.serial(mountpoint, () => this.release(mountpoint)) };
          break;
        }
        case 'POST /probe': {
          // an empty layer mounted and unmounted at once (Snapshotter.start's proof that mounts work)
          const { mountpoint } = releaseRequestSchema.parse(await readJson(req));
          await this.roots.check(mountpoint);
          await this.serial(mountpoint, () => {
            // never over a layer this manager serves (it would be hidden while the probe is mounted)
            if (this.entries.has(mountpoint) || readMountInfo().some((m) => m.mountpoint === mountpoint))
              throw new DfError(
                'FAILED_PRECONDITION',
                `fuse manager: ${mountpoint} is a mount point; a probe needs an unused directory`,
              );
            return this.rt.probeMount(mountpoint);
          });
          out = { ok: true };
          break;
        }
        case 'POST /warm': {
          const { imageRef, layers } = warmRequestSchema.parse(await readJson(req));
          let ref: ImageReference;
          try {
            ref = parseReference(imageRef);
          } catch (err) {
            throw DfError.invalidArgument(`fuse manager: bad image reference: ${(err as Error).message}`);
          }
          this.rt.layers.warmTocs(layers.map(asDfbLayer), ref);
          out = { warming: layers.length };
          break;
        }
        case 'POST /preheat': {
          const { ref } = preheatRequestSchema.parse(await readJson(req));
          if (!this.client) throw DfError.unsupported('fuse manager: started without a registry client');
          out = await preheatHere(
            this.rt.layers,
            this.client,
            parseReference(ref),
            ac.signal,
            this.log,
            this.rt.preheatHolds,
          );
          break;
        }
        case 'POST /get': {
          if (!this.opts.gets) throw DfError.unsupported('fuse manager: started without gets');
          const args = getArgs.parse(await readJson(req));
          out = await this.opts.gets.get(args, ac.signal, () => undefined);
          break;
        }
        case 'GET /gets':
          out = { gets: [...(this.opts.gets?.active.values() ?? [])] };
          break;
        case 'GET /status':
          out = { blobs: this.rt.cache.list(), stats: this.rt.statusSnapshot() };
          break;
        case 'POST /gc':
          out = await this.rt.cache.gc();
          break;
        case 'POST /shutdown':
          out = { ok: true };
          res.once('finish', () => this.shutdownRequested.abort());
          break;
        default:
          throw DfError.notFound(`fuse manager: no such endpoint ${route}`);
      }
      send(res, 200, out);
    } catch (err) {
      const e =
        err instanceof Error && err.name === 'ZodError'
          ? DfError.invalidArgument(`fuse manager: bad request: ${err.message}`)
          : DfError.from(err);
      const status = STATUS[e.code] ?? 500;
      if (status >= 500 || e.code === 'FORBIDDEN') this.log.warn({ err }, 'fuse manager request failed');
      send(res, status, { error: { code: e.code, message: e.message } });
      // A body we did not read (too large, or not read at all): the connection is not reused.
      if (!req.complete) res.once('finish', () => req.destroy());
    }
  }
}

const STATUS: Partial<Record<DfError['code'], number>> = {
  NOT_FOUND: 404,
  INVALID_ARGUMENT: 400,
  FORBIDDEN: 403,
  FAILED_PRECONDITION: 409,
};

function asDfbLayer(l: ManagedLayer) {
  return { digest: l.digest, size: l.size, tocDigest: l.tocDigest, diffId: l.diffId, tocOffset: l.tocOffset };
}

function send(res: ServerResponse, status: number, body: unknown): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...(status >= 400 ? { connection: 'close' } : {}),
  });
  res.end(text);
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MAX_BODY) throw DfError.invalidArgument('fuse manager: request body too large');
    chunks.push(c as Buffer);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
  } catch {
    throw DfError.invalidArgument('fuse manager: request body is not JSON');
  }
}
