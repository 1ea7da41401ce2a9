import { resolve } from 'node:path';
import type { Config } from '../../config.js';
import { controlSocketPath } from '../../daemon/control-protocol.js';
import { preheatHere } from '../../daemon/control-preheat.js';
import { DaemonGets } from '../../daemon/control-get.js';
import type { PullHooks } from '../../daemon/control-pull.js';
import { serveControl } from '../../daemon/control-socket.js';
import { DfError } from '../../errors.js';
import { ensureFuseManager, stopFuseManager } from '../../fusemanager/client.js';
import { ManagedRemoteLayers } from '../../fusemanager/managed-remote-layers.js';
import { createLogger, type Logger } from '../../log.js';
import { processRunning } from '../../process.js';
import type { RegistryClient } from '../../registry/client.js';
import { serveSnapshotter } from '../../snapshotter/grpc-service.js';
import { NodeRemoteLayers } from '../../daemon/node-remote-layers.js';
import { ReadRecorder } from '../../daemon/read-recorder.js';
import { LayerResolver, type RemoteLayers } from '../../snapshotter/remote-layers.js';
import { Snapshotter } from '../../snapshotter/snapshotter.js';
import { configFrom, requireClusterToken, waitForSignal, type NodeFlags } from '../node-common.js';
import { makeClient } from '../registry-client.js';

export interface RunFlags extends NodeFlags {
  snapshotterRoot?: string;
  snapshotterSocket?: string;
  snapshotter?: boolean;
  fuseManager?: boolean;
  stopFuseManager?: boolean;
  controlSocket?: string;
  recordReads?: string;
}

/** `dfnode run`: the node daemon (snapshotter; cache and FUSE mounts in the fuse manager or in this process). */
export async function runCommand(flags: RunFlags, signal: AbortSignal): Promise<void> {
  const cfg = configFrom(flags);
  if (flags.snapshotterRoot) cfg.snapshotter.root = resolve(flags.snapshotterRoot);
  if (flags.snapshotterSocket) cfg.snapshotter.socket = resolve(flags.snapshotterSocket);
  if (flags.snapshotter === false) cfg.snapshotter.enabled = false;
  if (flags.fuseManager === false) cfg.node.fuseManager = false;
  // the recorder sees the reads of mounts served by this process only
  const recordTo = flags.recordReads ? resolve(flags.recordReads) : undefined;
  if (recordTo) cfg.node.fuseManager = false;
  if (flags.controlSocket !== undefined)
    cfg.node.controlSocket = ['', 'off'].includes(flags.controlSocket)
      ? flags.controlSocket
      : resolve(flags.controlSocket);
  const log = createLogger(cfg.logLevel);
  if (!flags.stopFuseManager) requireClusterToken(cfg);
  if (flags.stopFuseManager) {
    const pid = await stopFuseManager(cfg.node.stateDir);
    process.stdout.write(pid ? `fuse manager (pid ${pid}) stopped\n` : 'no fuse manager running\n');
    return;
  }
  const client = makeClient(cfg, log, flags.creds);
  // The first Date a process makes initialises V8's date cache, which pages in ICU's time-zone data: 25–30 ms
  // after a cold boot (dropped page cache), paid by the first pull's lease (its expiry label) if not here.
  new Date(Date.now()).toISOString();
  const controlSocket = controlSocketPath(cfg.node);
  const control = controlSocket
    ? await serveControl(controlSocket, log, client).catch(async (err: unknown) => {
        await client.close().catch(() => undefined);
        throw err;
      })
    : undefined;
  try {
    // the registry mirror runs where the cache is: in the fuse manager, or in serveNode below
    if (cfg.node.fuseManager && cfg.snapshotter.enabled)
      await runWithFuseManager(cfg, log, client, flags.creds, signal, control?.hooks);
    else await runInProcess(cfg, log, client, signal, control?.hooks, recordTo);
  } finally {
    await control?.stop();
    await client.close().catch(() => undefined);
  }
}

/** `dfnode run` without the FUSE manager: cache and FUSE mounts in this process. */
async function runInProcess(
  cfg: Config,
  log: Logger,
  client: RegistryClient,
  signal: AbortSignal,
  hooks: PullHooks = {},
  recordTo?: string,
): Promise<void> {
  // Only this path runs a node runtime here: the fuse manager path above does not load it.
  const { serveNode } = await import('../node-serve.js');
  const recorder = recordTo ? new ReadRecorder() : undefined;
  const writeRecording = async () => {
    if (!recorder || !recordTo) return;
    await recorder.writeTo(recordTo);
    log.info(
      { file: recordTo, files: recorder.fileCount, dropped: recorder.droppedFiles },
      'read recording written',
    );
  };
  await serveNode(
    cfg,
    log,
    client,
    async (rt) => {
      const slog = log.child({ component: 'snapshotter' });
      const resolver = new LayerResolver(client, { logger: slog });
      const remote = new NodeRemoteLayers(rt, client, { logger: slog, resolver });
      // a pull through the control socket or an image's first Prepare: every layer's TOC, ahead of the Prepares
      resolver.onImage = (name, layers) => remote.warm(name, layers);
      const snap = cfg.snapshotter.enabled ? await startSnapshotter(cfg, slog, remote) : undefined;
      hooks.onResolved = ({ name, manifestDigest, layers }) =>
        resolver.remember(name, manifestDigest, layers);
      hooks.preheat = (ref, signal) => preheatHere(rt.layers, client, ref, signal, log, rt.preheatHolds);
      hooks.get = new DaemonGets({ config: cfg, client, caches: rt.cache, p2p: rt.p2p, logger: log }).get;
      try {
        log.info(
          { cache: cfg.cache.dir, metrics: cfg.node.metricsAddress, snapshotter: snap?.address },
          'dfnode running',
        );
        process.stdout.write(
          `dfnode running; snapshotter on ${snap?.address ?? '(off)'}; metrics on ${cfg.node.metricsAddress || '(off)'}\n`,
        );
        await waitForSignal(signal, () => {
          void rt.cache.gc().catch(() => undefined);
          writeRecording().catch((err) => log.error({ err }, 'read recording not written'));
        });
      } finally {
        await snap?.stop();
        await writeRecording();
      }
    },
    { recorder, mirror: true },
  );
}

/** The containerd snapshotter of `dfnode run`, served on a unix socket; remote layers through `remote`. */
async function startSnapshotter(
  cfg: Config,
  slog: Logger,
  remote: RemoteLayers,
): Promise<{ address: string; stop(): Promise<void> }> {
  const sn = new Snapshotter({ root: cfg.snapshotter.root, remote, logger: slog });
  await sn.start();
  const server = await serveSnapshotter(sn, cfg.snapshotter.socket, { logger: slog });
  return {
    address: server.address,
    stop: async () => {
      await server.stop();
      await sn.close();
    },
  };
}

/**
 * `dfnode run` with the FUSE manager: the manager (started if none answers) owns the cache, the fetches and
 * the FUSE mounts; this process serves the snapshotter. On SIGTERM the snapshotter stops and the mounts stay
 * (running containers keep reading); a new `dfnode run` adopts them. When the manager dies, this process
 * exits (status 1) so that its supervisor restarts it: the new start cleans the dead mounts and mounts again.
 */
async function runWithFuseManager(
  cfg: Config,
  log: Logger,
  client: RegistryClient,
  creds: string | undefined,
  signal: AbortSignal,
  hooks: PullHooks = {},
): Promise<void> {
  const fm = await ensureFuseManager(cfg, log.child({ component: 'fuse-manager-client' }), { creds });
  const slog = log.child({ component: 'snapshotter' });
  const resolver = new LayerResolver(client, { logger: slog });
  const remote = new ManagedRemoteLayers(fm.client, resolver, { logger: slog });
  resolver.onImage = (name, layers) => remote.warm(name, layers);
  hooks.onResolved = ({ name, manifestDigest, layers }) => resolver.remember(name, manifestDigest, layers);
  hooks.preheat = (ref, signal) => fm.client.preheat(ref.toString(), signal);
  hooks.get = (args, signal, progress) => fm.client.get(args, signal, progress);
  const snap = await startSnapshotter(cfg, slog, remote);
  const lost = new AbortController();
  const watchdog = setInterval(() => {
    if (processRunning(fm.pid)) return;
    log.error(
      { pid: fm.pid },
      'fuse manager is gone: its layer mounts are dead; exiting so that dfnode is restarted',
    );
    lost.abort();
  }, 1000);
  try {
    log.info({ snapshotter: snap.address, fuseManager: fm.pid, started: fm.started }, 'dfnode running');
    process.stdout.write(
      `dfnode running; snapshotter on ${snap.address}; fuse manager pid ${fm.pid}${fm.started ? ' (started)' : ''}; metrics ${
        cfg.node.metricsAddress ? `on ${cfg.node.metricsAddress} (fuse manager)` : '(off)'
      }\n`,
    );
    await waitForSignal(AbortSignal.any([signal, lost.signal]));
  } finally {
    clearInterval(watchdog);
    await snap.stop();
  }
  if (lost.signal.aborted && !signal.aborted)
    throw new DfError(
      'FAILED_PRECONDITION',
      `fuse manager (pid ${fm.pid}) exited; restart dfnode run to mount the layers again`,
    );
}
