#!/usr/bin/env node
import { Command, Option } from 'commander';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { CacheManager, type BlobCacheInfo } from '../cache/cache-manager.js';
import { loadConfig, type Config } from '../config.js';
import { NodeMetrics } from '../daemon/metrics.js';
import { MountRecords } from '../daemon/mount-records.js';
import { NodeRuntime } from '../daemon/node-runtime.js';
import { processRunning } from '../process.js';
import { DfError } from '../errors.js';
import { unmountAllOnExit, lazyUnmount } from '../fuse/mounts.js';
import { createLogger, type Logger } from '../log.js';
import { RegistryClient } from '../registry/client.js';
import { chainCredentials, DockerConfigCredentials, StaticCredentials } from '../registry/credentials.js';
import { parseReference } from '../registry/reference.js';
import { CONVERTER_VERSION } from '../../converter/version.js';
import { runMain } from './run-main.js';
import { serveSnapshotter } from '../snapshotter/grpc-service.js';
import { LayerResolver, NodeRemoteLayers, type RemoteLayers } from '../snapshotter/remote-layers.js';
import {
  CREDS_ENV,
  ensureFuseManager,
  FuseManagerClient,
  managerPid,
  stopFuseManager,
} from '../fusemanager/client.js';
import { fuseManagerPaths } from '../fusemanager/protocol.js';
import { ManagedRemoteLayers } from '../fusemanager/managed-remote-layers.js';
import { FuseManagerServer } from '../fusemanager/server.js';
import { Snapshotter } from '../snapshotter/snapshotter.js';
import { P2pNode } from '../p2p/p2p-node.js';
import { Seed } from '../p2p/seed.js';
import { preheat } from '../p2p/preheat.js';

interface NodeFlags {
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

interface PullFlags {
  address: string;
  namespace: string;
  snapshotter: string;
  platform?: string;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

function addCommon(cmd: Command): Command {
  return cmd
    .option('-c, --config <file>', 'JSON config file (also DFNODE_CONFIG)')
    .option('--cache-dir <dir>', 'block cache directory (default /var/lib/dfnode/cache)')
    .option('--state-dir <dir>', 'mounts and records (default /var/lib/dfnode/state)')
    .addOption(
      new Option('--log-level <level>', 'log level').choices([
        'trace',
        'debug',
        'info',
        'warn',
        'error',
        'silent',
      ]),
    );
}

function addP2p(cmd: Command): Command {
  return cmd
    .option('--seeds <host:port,...>', 'seed list (P2P tier; config p2p.seeds)')
    .option(
      '--cluster-token <token>',
      'cluster token (better: p2p.clusterTokenFile or DFNODE_P2P_CLUSTER_TOKEN)',
    )
    .option('--p2p-listen <host:port>', 'block server address (default 0.0.0.0:7700)')
    .option('--advertise <host:port>', 'address peers reach this host at')
    .option('--p2p-tls-cert <file>', "mutual TLS: this host's PEM certificate, signed by the cluster CA")
    .option('--p2p-tls-key <file>', 'mutual TLS: its PEM private key')
    .option('--p2p-tls-ca <file>', 'mutual TLS: the cluster CA (PEM); with cert and key, or none of them');
}

/** The P2P tier of a node runtime, when seeds are configured. */
async function startP2p(cfg: Config, log: Logger): Promise<P2pNode | undefined> {
  if (!cfg.p2p.seeds.length) return undefined;
  const p2p = new P2pNode({ config: cfg, logger: log.child({ component: 'p2p' }) });
  const addr = await p2p.start();
  log.info({ address: addr, seeds: cfg.p2p.seeds }, 'p2p: serving blocks to peers');
  return p2p;
}

function addRegistry(cmd: Command): Command {
  return cmd
    .option('--plain-http', 'use plain HTTP for every registry')
    .option('--insecure <host>', 'use plain HTTP for this registry host[:port] (repeatable)', collect)
    .option('--creds <user:password>', 'registry credentials')
    .option('--docker-config <file>', 'docker config file with registry credentials');
}

function configFrom(flags: NodeFlags): Config {
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

function makeClient(cfg: Config, log: Logger, creds: string | undefined): RegistryClient {
  // The fetch layer retries across attempts and sources and bounds each read: keep the client's own
  // retries short so that an unreachable registry gives EIO within the read timeout.
  return new RegistryClient({
    plainHttp: cfg.registry.plainHttp,
    insecure: cfg.registry.insecure,
    timeoutMs: Math.min(cfg.registry.timeoutMs, cfg.fetch.requestTimeoutMs),
    retries: 1,
    retryBaseMs: 100,
    retryMaxMs: 1000,
    logger: log,
    userAgent: `dfnode/${CONVERTER_VERSION}`,
    credentials: chainCredentials(
      creds ? StaticCredentials.fromString(creds) : undefined,
      new DockerConfigCredentials({ path: cfg.registry.dockerConfig, logger: log }),
    ),
  });
}

function waitForSignal(signal: AbortSignal, extra?: (sig: NodeJS.Signals) => void): Promise<void> {
  return new Promise((resolveWait) => {
    if (signal.aborted) return resolveWait();
    signal.addEventListener('abort', () => resolveWait(), { once: true });
    if (extra) process.on('SIGUSR2', () => extra('SIGUSR2'));
  });
}

function fmt(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  return `${(n / 1e3).toFixed(1)} kB`;
}

async function serveNode(
  cfg: Config,
  log: Logger,
  client: RegistryClient,
  body: (rt: NodeRuntime) => Promise<void>,
): Promise<void> {
  const metrics = new NodeMetrics();
  const p2p = await startP2p(cfg, log);
  const rt = new NodeRuntime({ config: cfg, client, logger: log, metrics, p2p });
  const removeExitHook = unmountAllOnExit(log);
  let server: Awaited<ReturnType<NodeMetrics['serve']>> | undefined;
  const statsTimer = setInterval(async () => {
    for (const im of rt.imageMounts()) {
      const recs = await rt.records.list();
      const rec = recs.find((r) => r.id === im.id);
      if (rec) await rt.records.write({ ...rec, stats: rt.statusSnapshot() }).catch(() => undefined);
    }
  }, 1000);
  statsTimer.unref();
  try {
    await rt.start();
    if (cfg.node.metricsAddress) server = await metrics.serve(cfg.node.metricsAddress);
    await body(rt);
  } finally {
    clearInterval(statsTimer);
    server?.close();
    await rt.close();
    await p2p?.close();
    removeExitHook();
    await client.close().catch(() => undefined);
  }
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

export function buildProgram(signal: AbortSignal): Command {
  const program = new Command('dfnode')
    .description('dfnode: lazy, peer-to-peer image loading for containerd (node daemon and tools)')
    .version(CONVERTER_VERSION)
    .showHelpAfterError();

  addP2p(addRegistry(addCommon(program.command('mount'))))
    .description(
      'mount a converted image read-only at DIR (merged view of its layers) until umount or SIGINT/SIGTERM',
    )
    .argument('<ref>', 'registry reference of a converted image (dfconvert output)')
    .argument('<dir>', 'mount point (created if missing)')
    .option('--metrics-address <host:port>', 'serve Prometheus metrics here (empty: off)', '')
    .option('--fill-rate <bytes/s>', 'background fill rate limit, e.g. 20M (0 = unlimited)')
    .option('--read-timeout <ms>', 'a read blocked on the network fails with EIO after this long')
    .action(async (refText: string, dir: string, flags: NodeFlags) => {
      const cfg = configFrom(flags);
      const log = createLogger(cfg.logLevel);
      const ref = parseReference(refText);
      const client = makeClient(cfg, log, flags.creds);
      await serveNode(cfg, log, client, async (rt) => {
        const im = await rt.mountImage(ref, dir, signal);
        process.stdout.write(
          `mounted ${ref} (${im.layers.length} layers, ${fmt(im.image.layers.reduce((a, l) => a + l.size, 0))}) at ${im.target}\n`,
        );
        await waitForSignal(signal, () => void rt.cache.gc().catch(() => undefined));
      });
    });

  addCommon(program.command('umount'))
    .description('unmount a directory mounted by dfnode mount')
    .argument('<dir>')
    .action(async (dir: string, flags: NodeFlags) => {
      const cfg = configFrom(flags);
      const target = resolve(dir);
      const records = new MountRecords(join(cfg.node.stateDir, 'mounts'));
      const rec = (await records.list()).find((r) => r.target === target);
      if (!rec) throw DfError.notFound(`${target} is not a dfnode mount (see dfnode status)`);
      if (rec.alive) {
        process.kill(rec.pid, 'SIGTERM');
        const deadline = Date.now() + 30_000;
        while (processRunning(rec.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
        if (processRunning(rec.pid))
          throw DfError.timeout(`dfnode mount (pid ${rec.pid}) did not stop within 30 s`);
      }
      // The serving process is gone: remove whatever it could not.
      await lazyUnmount(target).catch(() => undefined);
      await rm(join(cfg.node.stateDir, 'mnt', rec.id), { recursive: true, force: true }).catch(
        () => undefined,
      );
      await records.remove(rec.id);
      process.stdout.write(`unmounted ${target}\n`);
    });

  addCommon(program.command('status'))
    .description('show mounts, cache fill per blob and bytes by source')
    .option('--json', 'machine-readable output')
    .action(async (flags: NodeFlags) => {
      const cfg = configFrom(flags);
      const records = await new MountRecords(join(cfg.node.stateDir, 'mounts')).list();
      // With `dfnode run`, the fuse manager holds the cache: ask it (in-use flags and fetch counters).
      const mpid = managerPid(cfg.node.stateDir);
      let blobs: BlobCacheInfo[];
      let manager: { pid: number; stats: unknown } | undefined;
      if (mpid !== undefined) {
        const st = await new FuseManagerClient(fuseManagerPaths(cfg.node.stateDir).socket).status();
        blobs = st.blobs;
        manager = { pid: mpid, stats: st.stats };
      } else {
        const cache = new CacheManager({
          dir: cfg.cache.dir,
          highWatermark: cfg.cache.highWatermark,
          lowWatermark: cfg.cache.lowWatermark,
          lock: false,
        });
        await cache.init();
        // This process does not hold the cache: a blob is in use when a live mount record names it.
        const used = new Set(records.filter((r) => r.alive).flatMap((r) => r.layers));
        blobs = cache.list().map((b) => ({ ...b, inUse: b.inUse || used.has(b.digest) }));
        await cache.close();
      }
      if (flags.json) {
        process.stdout.write(JSON.stringify({ mounts: records, blobs, manager }) + '\n');
        return;
      }
      const out: string[] = [];
      if (manager) {
        const st = manager.stats as { bytes?: Record<string, number> } | undefined;
        const by = Object.entries(st?.bytes ?? {})
          .filter(([, v]) => v > 0)
          .map(([k, v]) => `${k} ${fmt(v)}`)
          .join(', ');
        out.push(`fuse manager pid ${manager.pid}; bytes by source: ${by || 'none yet'}`);
      }
      out.push(`mounts (${records.length}):`);
      for (const r of records) {
        out.push(
          `  ${r.target}  ${r.ref}  pid ${r.pid}${r.alive ? '' : ' (dead)'}  ${r.layers.length} layers`,
        );
        if (r.stats) {
          const by = Object.entries(r.stats.bytes)
            .filter(([, v]) => v > 0)
            .map(([k, v]) => `${k} ${fmt(v)}`)
            .join(', ');
          out.push(
            `    bytes by source: ${by || 'none yet'}; verification failures ${r.stats.verifyFailures}`,
          );
        }
      }
      out.push(
        `cache ${cfg.cache.dir} (${blobs.length} blobs, ${fmt(blobs.reduce((a, b) => a + b.filledBytes, 0))}):`,
      );
      for (const b of blobs)
        out.push(
          `  ${b.digest.slice(0, 19)}  ${((100 * b.filledBytes) / Math.max(1, b.size)).toFixed(1).padStart(5)}% of ${fmt(b.size)}${
            b.complete ? ' complete' : ''
          }${b.inUse ? ' in use' : ''}`,
        );
      process.stdout.write(out.join('\n') + '\n');
    });

  addCommon(program.command('gc'))
    .description('evict cached blobs that no mount uses')
    .action(async (flags: NodeFlags) => {
      const cfg = configFrom(flags);
      if (managerPid(cfg.node.stateDir) !== undefined) {
        const r = await new FuseManagerClient(fuseManagerPaths(cfg.node.stateDir).socket).gc();
        process.stdout.write(
          `evicted ${r.evicted.length} blobs, freed ${fmt(r.freedBytes)} (via the fuse manager)\n`,
        );
        return;
      }
      const records = (await new MountRecords(join(cfg.node.stateDir, 'mounts')).list()).filter(
        (r) => r.alive,
      );
      if (records.length) {
        // A running dfnode holds the cache: ask each to collect (its in-use blobs stay).
        for (const r of records) process.kill(r.pid, 'SIGUSR2');
        process.stdout.write(`asked ${records.length} running dfnode process(es) to evict unused blobs\n`);
        return;
      }
      const cache = new CacheManager({
        dir: cfg.cache.dir,
        highWatermark: cfg.cache.highWatermark,
        lowWatermark: cfg.cache.lowWatermark,
      });
      await cache.init();
      try {
        const r = await cache.gc();
        process.stdout.write(`evicted ${r.evicted.length} blobs, freed ${fmt(r.freedBytes)}\n`);
      } finally {
        await cache.close();
      }
    });

  addRegistry(program.command('pull'))
    .description(
      'lazy pull of a converted image into containerd (then: ctr run --snapshotter dfnode REF ID CMD)',
    )
    .argument('<ref>', 'registry reference of a converted image (dfconvert output)')
    .option('-c, --config <file>', 'JSON config file (also DFNODE_CONFIG)')
    .option('--address <socket>', 'containerd socket', '/run/containerd/containerd.sock')
    .option('-n, --namespace <ns>', 'containerd namespace (CRI/Kubernetes: k8s.io)', 'default')
    .option('--snapshotter <name>', "snapshotter name in containerd's proxy_plugins", 'dfnode')
    .option('--platform <os/arch>', 'platform to pick from an image index (default: this host)')
    .action(async (refText: string, flags: NodeFlags & PullFlags) => {
      const { ContainerdClient } = await import('../containerd/client.js');
      const { lazyPull } = await import('../containerd/pull.js');
      const cfg = configFrom(flags);
      const log = createLogger(cfg.logLevel);
      const client = makeClient(cfg, log, flags.creds);
      const ctd = new ContainerdClient({ address: flags.address, namespace: flags.namespace });
      try {
        await lazyPull(parseReference(refText), {
          registry: client,
          containerd: ctd,
          snapshotter: flags.snapshotter,
          platform: flags.platform,
          signal,
          onProgress: (line) => process.stdout.write(`${line}\n`),
        });
      } finally {
        ctd.close();
        await client.close().catch(() => undefined);
      }
    });

  addP2p(addRegistry(addCommon(program.command('run'))))
    .option(
      '--snapshotter-root <dir>',
      'snapshot directories and metadata (default /var/lib/dfnode/snapshotter)',
    )
    .option(
      '--snapshotter-socket <path>',
      'containerd proxy plugin socket (default /run/dfnode/snapshotter.sock)',
    )
    .option('--no-snapshotter', 'do not serve the containerd snapshotter')
    .option(
      '--no-fuse-manager',
      'serve the FUSE mounts from this process (they die with it) instead of the long-lived fuse manager',
    )
    .option(
      '--stop-fuse-manager',
      'full shutdown: stop the fuse manager of the state dir (unmounts every lazily mounted layer) and exit',
    )
    .description('run the node daemon (cache, FUSE mounts, metrics endpoint)')
    .option(
      '--metrics-address <host:port>',
      'serve Prometheus metrics here (default 127.0.0.1:9877; empty: off)',
    )
    .action(async (flags: RunFlags) => {
      const cfg = configFrom(flags);
      if (flags.snapshotterRoot) cfg.snapshotter.root = resolve(flags.snapshotterRoot);
      if (flags.snapshotterSocket) cfg.snapshotter.socket = resolve(flags.snapshotterSocket);
      if (flags.snapshotter === false) cfg.snapshotter.enabled = false;
      if (flags.fuseManager === false) cfg.node.fuseManager = false;
      const log = createLogger(cfg.logLevel);
      if (flags.stopFuseManager) {
        const pid = await stopFuseManager(cfg.node.stateDir);
        process.stdout.write(pid ? `fuse manager (pid ${pid}) stopped\n` : 'no fuse manager running\n');
        return;
      }
      const client = makeClient(cfg, log, flags.creds);
      if (cfg.node.fuseManager && cfg.snapshotter.enabled) {
        try {
          await runWithFuseManager(cfg, log, client, flags.creds, signal);
        } finally {
          await client.close().catch(() => undefined);
        }
        return;
      }
      await serveNode(cfg, log, client, async (rt) => {
        const slog = log.child({ component: 'snapshotter' });
        const snap = cfg.snapshotter.enabled
          ? await startSnapshotter(cfg, slog, new NodeRemoteLayers(rt, client, { logger: slog }))
          : undefined;
        try {
          log.info(
            { cache: cfg.cache.dir, metrics: cfg.node.metricsAddress, snapshotter: snap?.address },
            'dfnode running',
          );
          process.stdout.write(
            `dfnode running; snapshotter on ${snap?.address ?? '(off)'}; metrics on ${cfg.node.metricsAddress || '(off)'}\n`,
          );
          await waitForSignal(signal, () => void rt.cache.gc().catch(() => undefined));
        } finally {
          await snap?.stop();
        }
      });
    });

  addP2p(addRegistry(addCommon(program.command('seed'))))
    .description('run a seed: full copies of blobs fetched from the registry once, block server and tracker')
    .option('--metrics-address <host:port>', 'serve Prometheus metrics here (default: off)')
    .action(async (flags: NodeFlags) => {
      const cfg = configFrom(flags);
      const log = createLogger(cfg.logLevel);
      const client = makeClient(cfg, log, flags.creds);
      const seed = new Seed({ config: cfg, client, logger: log.child({ component: 'seed' }) });
      const metrics = new NodeMetrics();
      metrics.onScrape(() => {
        metrics.publishSeed(seed.metricsCounters);
        metrics.publishBlockServer(seed.counters);
      });
      let server: Awaited<ReturnType<NodeMetrics['serve']>> | undefined;
      try {
        const a = await seed.start();
        if (flags.metricsAddress) server = await metrics.serve(flags.metricsAddress);
        log.info({ ...a, metrics: flags.metricsAddress || '' }, 'dfnode seed running');
        process.stdout.write(`seed serving blocks on ${a.blocks}, tracker on ${a.tracker}\n`);
        await waitForSignal(signal);
      } finally {
        server?.close();
        await seed.close();
        await client.close().catch(() => undefined);
      }
    });

  addP2p(addRegistry(addCommon(program.command('preheat'))))
    .description("fetch every block of an image into this node's cache through peers and seeds, then exit")
    .argument('<ref>', 'registry reference of a converted image (dfconvert output)')
    .option('--serve', 'after preheating, keep serving peers until SIGINT/SIGTERM')
    .option('--json', 'print the result as JSON')
    .option('--metrics-address <host:port>', 'serve Prometheus metrics here (default: off)')
    .action(async (refText: string, flags: NodeFlags & { serve?: boolean }) => {
      const cfg = configFrom(flags);
      cfg.fetch.backgroundFill = false;
      cfg.node.metricsAddress = flags.metricsAddress ?? '';
      const log = createLogger(cfg.logLevel);
      const ref = parseReference(refText);
      const client = makeClient(cfg, log, flags.creds);
      await serveNode(cfg, log, client, async (rt) => {
        const r = await preheat(rt, client, ref, { signal, logger: log });
        try {
          const b = r.bySource;
          process.stdout.write(
            flags.json
              ? JSON.stringify(r) + '\n'
              : `preheated ${ref}: ${r.layers} layers, ${fmt(r.bytes)}; from peers ${fmt(b.peer)}, seeds ${fmt(b.seed)}, ` +
                  `registry ${fmt(b.registry)}, cache ${fmt(b.cache)}\n`,
          );
          if (flags.serve) await waitForSignal(signal);
        } finally {
          await r.release();
        }
      });
    });

  program
    .command('fuse-manager', { hidden: true })
    .description('the long-lived FUSE server of `dfnode run` (started by it; see deploy/README.md)')
    .option('-c, --config <file>', 'JSON config file')
    .action(async (flags: { config?: string }) => {
      const cfg = loadConfig({ file: flags.config });
      const log = createLogger(cfg.logLevel).child({ component: 'fuse-manager' });
      const client = makeClient(cfg, log, process.env[CREDS_ENV]);
      delete process.env[CREDS_ENV];
      await serveNode(cfg, log, client, async (rt) => {
        const server = new FuseManagerServer({ runtime: rt, stateDir: cfg.node.stateDir, logger: log });
        try {
          await server.listen();
          await waitForSignal(
            AbortSignal.any([signal, server.shutdownSignal]),
            () => void rt.cache.gc().catch(() => undefined),
          );
          log.info({ reason: signal.aborted ? 'signal' : 'shutdown request' }, 'fuse manager stopping');
        } finally {
          await server.close();
        }
      });
    });

  return program;
}

interface RunFlags extends NodeFlags {
  snapshotterRoot?: string;
  snapshotterSocket?: string;
  snapshotter?: boolean;
  fuseManager?: boolean;
  stopFuseManager?: boolean;
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
): Promise<void> {
  const fm = await ensureFuseManager(cfg, log.child({ component: 'fuse-manager-client' }), { creds });
  const slog = log.child({ component: 'snapshotter' });
  const remote = new ManagedRemoteLayers(fm.client, new LayerResolver(client, { logger: slog }), {
    logger: slog,
  });
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

runMain('dfnode', (signal, argv) => buildProgram(signal).parseAsync(argv));
