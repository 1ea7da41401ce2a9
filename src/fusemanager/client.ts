import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { fileURLToPath } from 'node:url';
import type { Config } from '../config.js';
import { DfError, ErrorCodes, type ErrorCode } from '../errors.js';
import { keepAliveTimers, sleep as sleepFor } from '../util/timers.js';
import { silentLogger, type Logger } from '../log.js';
import { readStartedWith, settingsNotApplied } from './config-drift.js';
import {
  fuseManagerPaths,
  type Health,
  type ManagedLayer,
  type ManagedMount,
  type MountRequest,
} from './protocol.js';
import { processRunning } from '../process.js';
import type { BlobCacheInfo } from '../cache/cache-manager.js';
import type { MountRecord } from '../daemon/mount-records.js';
import type { PreheatSummary } from '../daemon/control-preheat.js';
import type { GetArgs, GetProgress } from '../daemon/control-get.js';
import type { GetFileResult } from '../mirror/file-get.js';
import { DAEMON_NODE_FLAGS } from '../daemon/node-flags.js';

/** Environment variable that hands registry credentials (`--creds`) to a manager without putting them on argv. */
export const CREDS_ENV = 'DFNODE_FUSE_MANAGER_CREDS';

/** The control API of a running FUSE manager (see protocol.ts). */
export class FuseManagerClient {
  constructor(
    readonly socketPath: string,
    private readonly opts: { timeoutMs?: number } = {},
  ) {}

  private call<T>(
    method: 'GET' | 'POST',
    path: string,
    body?: unknown,
    o: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<T> {
    const timeoutMs = o.timeoutMs ?? this.opts.timeoutMs ?? 120_000;
    const text = body === undefined ? undefined : JSON.stringify(body);
    return new Promise<T>((resolve, reject) => {
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path,
          headers: text
            ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }
            : undefined,
          signal: o.signal,
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            let parsed: any;
            try {
              parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              return reject(
                new DfError(
                  'IO',
                  `fuse manager ${method} ${path}: answer is not JSON (status ${res.statusCode})`,
                ),
              );
            }
            if (res.statusCode === 200) return resolve(parsed as T);
            const code: ErrorCode = parsed?.error?.code in ErrorCodes ? parsed.error.code : 'INTERNAL';
            reject(
              new DfError(
                code,
                parsed?.error?.message ?? `fuse manager ${method} ${path}: status ${res.statusCode}`,
              ),
            );
          });
        },
      );
      req.on('timeout', () =>
        req.destroy(DfError.timeout(`fuse manager ${method} ${path} did not answer within ${timeoutMs} ms`)),
      );
      req.on('error', (err) =>
        reject(err instanceof DfError ? err : DfError.from(err, `fuse manager on ${this.socketPath}`)),
      );
      req.end(text);
    });
  }

  health(timeoutMs = 5000): Promise<Health> {
    return this.call('GET', '/health', undefined, { timeoutMs });
  }

  async list(): Promise<ManagedMount[]> {
    return (await this.call<{ mounts: ManagedMount[] }>('GET', '/mounts', undefined, { timeoutMs: 30_000 }))
      .mounts;
  }

  mount(req: MountRequest, signal?: AbortSignal): Promise<ManagedMount> {
    return this.call('POST', '/mount', req, { signal });
  }

  async release(mountpoint: string): Promise<boolean> {
    return (await this.call<{ released: boolean }>('POST', '/release', { mountpoint })).released;
  }

  /** Mounts an empty layer at `mountpoint` (an existing directory under the node's) and unmounts it. */
  async probe(mountpoint: string): Promise<void> {
    await this.call('POST', '/probe', { mountpoint }, { timeoutMs: 10_000 });
  }

  /** Cache contents (with in-use flags) and fetch counters of the manager's runtime (`dfnode status`). */
  status(): Promise<{ blobs: BlobCacheInfo[]; stats: MountRecord['stats'] }> {
    return this.call('GET', '/status', undefined, { timeoutMs: 30_000 });
  }

  /**
   * Asks the manager to read the TOCs of an image's layers into its cache now (a pull or a first Prepare has
   * just resolved the image), so that the mounts that follow find them there or on their way.
   */
  async warm(imageRef: string, layers: ManagedLayer[]): Promise<void> {
    await this.call('POST', '/warm', { imageRef, layers: layers.slice(0, 256) }, { timeoutMs: 10_000 });
  }

  /** Every block of an image into the manager's cache (`dfnode preheat` through `dfnode run`). */
  preheat(ref: string, signal?: AbortSignal): Promise<PreheatSummary> {
    // a large image over a slow link takes long; preheat fails by itself when no block arrives for a minute
    return this.call('POST', '/preheat', { ref }, { signal, timeoutMs: 24 * 3600_000 });
  }

  /**
   * `dfnode get` in the manager (it holds the cache): the result once the file is written; meanwhile its
   * progress (`GET /gets`, the entry for the same output path) every half second.
   */
  async get(args: GetArgs, signal: AbortSignal, progress: (p: GetProgress) => void): Promise<GetFileResult> {
    const done = this.call<GetFileResult>('POST', '/get', args, { signal, timeoutMs: 24 * 3600_000 });
    const poll = setInterval(() => {
      this.call<{ gets: (GetProgress & { out: string })[] }>('GET', '/gets', undefined, {
        timeoutMs: 5_000,
      }).then(
        ({ gets }) => {
          const g = gets.find((x) => x.out === args.out);
          if (g) progress({ size: g.size, done: g.done });
        },
        () => undefined,
      );
    }, 500);
    try {
      return await done;
    } finally {
      clearInterval(poll);
    }
  }

  /** Evicts the blobs no mount uses (`dfnode gc`). */
  gc(): Promise<{ evicted: string[]; freedBytes: number }> {
    return this.call('POST', '/gc', {}, { timeoutMs: 120_000 });
  }

  async shutdown(): Promise<void> {
    await this.call('POST', '/shutdown', {}, { timeoutMs: 10_000 });
  }
}

/** The pid in the manager's pid file when that process is alive and is a fuse manager. */
export function managerPid(stateDir: string): number | undefined {
  const { pid: pidFile } = fuseManagerPaths(stateDir);
  let pid: number;
  try {
    pid = Number.parseInt(readFileSync(pidFile, 'utf8'), 10);
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0 || !processRunning(pid)) return undefined;
  try {
    // pid files outlive reboots: make sure the pid was not reused by something else
    if (!readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('fuse-manager')) return undefined;
  } catch {
    return undefined;
  }
  return pid;
}

const sleep = (ms: number): Promise<void> => sleepFor(keepAliveTimers, ms);

async function waitHealthy(
  client: FuseManagerClient,
  timeoutMs: number,
  dead: () => string | undefined,
): Promise<Health> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      return await client.health(2000);
    } catch (err) {
      last = err;
    }
    const why = dead();
    if (why) throw new DfError('INTERNAL', why);
    if (Date.now() > deadline)
      throw DfError.timeout(
        `fuse manager on ${client.socketPath} did not become healthy within ${timeoutMs} ms: ${(last as Error)?.message}`,
      );
    await sleep(100);
  }
}

export interface EnsureFuseManagerOptions {
  /** Registry credentials (user:password) for the manager's fetches; passed through the environment. */
  creds?: string;
  startTimeoutMs?: number;
}

/**
 * Connects to the FUSE manager of `cfg.node.stateDir`, starting one when none answers: a detached process in
 * its own session (it outlives this one and its service's restarts), logging to fuse-manager.log, started with
 * this process's resolved configuration. A stale socket file is removed first.
 */
export async function ensureFuseManager(
  cfg: Config,
  logger: Logger = silentLogger,
  opts: EnsureFuseManagerOptions = {},
): Promise<{ client: FuseManagerClient; pid: number; started: boolean }> {
  const paths = fuseManagerPaths(cfg.node.stateDir);
  const client = new FuseManagerClient(paths.socket, {
    timeoutMs: Math.max(120_000, 2 * cfg.fetch.readTimeoutMs),
  });
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000;
  try {
    const h = await client.health();
    logger.info({ pid: h.pid, mounts: h.mounts }, 'fuse manager: connected to the running one');
    await warnNotApplied(cfg, h.pid, paths.config, logger);
    return { client, pid: h.pid, started: false };
  } catch {
    // none answers (or it is starting: see below)
  }
  const existing = managerPid(cfg.node.stateDir);
  if (existing) {
    // Alive but not answering yet: another dfnode run may just have started it.
    logger.info({ pid: existing }, 'fuse manager: waiting for the running one to answer');
    const h = await waitHealthy(client, startTimeoutMs, () =>
      processRunning(existing)
        ? undefined
        : `fuse manager (pid ${existing}) exited while starting; see ${paths.log}`,
    ).catch((err: DfError) => {
      throw new DfError(
        'FAILED_PRECONDITION',
        `fuse manager (pid ${existing}) does not answer on ${paths.socket}: ${err.message}; stop it (kill ${existing}) and start dfnode again`,
      );
    });
    await warnNotApplied(cfg, h.pid, paths.config, logger);
    return { client, pid: h.pid, started: false };
  }
  await mkdir(cfg.node.stateDir, { recursive: true });
  await rm(paths.socket, { force: true });
  await writeFile(paths.config, JSON.stringify(cfg), { mode: 0o600 });
  const logFd = openSync(paths.log, 'a', 0o640);
  // dist/src/fusemanager → dist/src/cli/dfnode.js; in the bundle (dist/bundle/) the CLI is a sibling chunk
  let cli = fileURLToPath(new URL('../cli/dfnode.js', import.meta.url));
  if (!existsSync(cli)) cli = fileURLToPath(new URL('./dfnode.js', import.meta.url));
  const env: NodeJS.ProcessEnv = { ...process.env };
  if (opts.creds) env[CREDS_ENV] = opts.creds;
  else delete env[CREDS_ENV];
  // a daemon that moves every byte its mounts read: Node's flags for daemons (src/daemon/node-flags.ts)
  const child = spawn(
    process.execPath,
    [...DAEMON_NODE_FLAGS, cli, 'fuse-manager', '--config', paths.config],
    {
      detached: true,
      stdio: ['ignore', logFd, logFd],
      env,
    },
  );
  closeSync(logFd);
  let exited: string | undefined;
  child.once(
    'exit',
    (code, signal) => (exited = `fuse manager exited at start (${code ?? signal}); see ${paths.log}`),
  );
  child.once('error', (err) => (exited = `cannot start the fuse manager: ${err.message}`));
  child.unref();
  logger.info({ pid: child.pid, log: paths.log }, 'fuse manager: started');
  const h = await waitHealthy(client, startTimeoutMs, () => {
    if (!exited) return undefined;
    const tail = readTail(paths.log);
    return tail ? `${exited}:\n${tail}` : exited;
  });
  return { client, pid: h.pid, started: true };
}

/**
 * A running manager keeps the configuration it was started with (cache, fetch, registry, P2P, mirror,
 * metrics): says which of this start's settings it does not apply and how to apply them.
 */
async function warnNotApplied(cfg: Config, pid: number, file: string, logger: Logger): Promise<void> {
  const startedWith = await readStartedWith(file);
  if (startedWith === undefined) return;
  const differ = settingsNotApplied(startedWith, cfg);
  if (differ.length)
    logger.warn(
      { pid, settings: differ },
      `fuse manager: the running one (pid ${pid}) keeps the configuration it was started with; ${differ.join(', ')} ` +
        'of this configuration are not applied. To apply them: stop the containers that use dfnode images, then ' +
        '`dfnode run --stop-fuse-manager` with this configuration, and start dfnode again',
    );
}

function readTail(file: string): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-15).join('\n').trim();
  } catch {
    return '';
  }
}

/**
 * Full shutdown of the FUSE manager of `stateDir`: it unmounts every layer (containers still using them lose
 * their files) and exits. Falls back to SIGTERM when it does not answer. Returns the pid it stopped.
 */
export async function stopFuseManager(stateDir: string, timeoutMs = 60_000): Promise<number | undefined> {
  const paths = fuseManagerPaths(stateDir);
  const client = new FuseManagerClient(paths.socket);
  let pid = managerPid(stateDir);
  try {
    pid = (await client.health()).pid;
    await client.shutdown();
  } catch {
    if (pid) process.kill(pid, 'SIGTERM');
  }
  if (!pid) {
    await rm(paths.socket, { force: true });
    return undefined;
  }
  const deadline = Date.now() + timeoutMs;
  while (processRunning(pid)) {
    if (Date.now() > deadline)
      throw DfError.timeout(`fuse manager (pid ${pid}) did not stop within ${timeoutMs} ms`);
    await sleep(100);
  }
  await rm(paths.socket, { force: true });
  await readFile(paths.pid, 'utf8').then(
    (t) => (Number.parseInt(t, 10) === pid ? rm(paths.pid, { force: true }) : undefined),
    () => undefined,
  );
  return pid;
}
