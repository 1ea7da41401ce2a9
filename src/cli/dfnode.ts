#!/usr/bin/env node
// The command line only: each action loads its command's module (./commands/) when it runs, so that
// `--version`, `--help` and each command pay only for the subsystems they use.
import { Command, Option } from 'commander';
import { CONVERTER_VERSION } from '../../converter/version.js';
import type { MirrorSetupFlags } from './commands/mirror-setup.js';
import type { GetFlags } from './commands/get.js';
import type { PreheatFlags } from './commands/preheat.js';
import type { PullFlags } from './commands/pull.js';
import type { RunFlags } from './commands/run.js';
import type { NodeFlags } from './node-common.js';
import { runMain } from './run-main.js';

const collect = (v: string, prev: string[] = []) => [...prev, v];

/**
 * Each command's module, loaded when its command runs (and all of them by the hidden warm-code-cache
 * command, which npm run build runs so that the bundle's code cache holds them: bundle-entry.ts).
 */
const commands = {
  fuseManager: () => import('./commands/fuse-manager.js'),
  gc: () => import('./commands/gc.js'),
  get: () => import('./commands/get.js'),
  mirrorSetup: () => import('./commands/mirror-setup.js'),
  mount: () => import('./commands/mount.js'),
  preheat: () => import('./commands/preheat.js'),
  pull: () => import('./commands/pull.js'),
  run: () => import('./commands/run.js'),
  seed: () => import('./commands/seed.js'),
  status: () => import('./commands/status.js'),
  throughDaemon: () => import('./commands/through-daemon.js'),
  umount: () => import('./commands/umount.js'),
};

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

function addRegistry(cmd: Command): Command {
  return cmd
    .option('--plain-http', 'use plain HTTP for every registry')
    .option('--insecure <host>', 'use plain HTTP for this registry host[:port] (repeatable)', collect)
    .option('--creds <user:password>', 'registry credentials')
    .option('--docker-config <file>', 'docker config file with registry credentials');
}

function buildProgram(signal: AbortSignal): Command {
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
      const { mountCommand } = await commands.mount();
      await mountCommand(refText, dir, flags, signal);
    });

  addCommon(program.command('umount'))
    .description('unmount a directory mounted by dfnode mount')
    .argument('<dir>')
    .action(async (dir: string, flags: NodeFlags) => {
      const { umountCommand } = await commands.umount();
      await umountCommand(dir, flags);
    });

  addCommon(program.command('status'))
    .description('show mounts, cache fill per blob and bytes by source')
    .option('--json', 'machine-readable output')
    .action(async (flags: NodeFlags) => {
      const { statusCommand } = await commands.status();
      await statusCommand(flags);
    });

  addCommon(program.command('gc'))
    .description('evict cached blobs that no mount uses')
    .action(async (flags: NodeFlags) => {
      const { gcCommand } = await commands.gc();
      await gcCommand(flags);
    });

  addCommon(program.command('mirror-setup'))
    .description(
      "point containerd at this node's registry mirror: writes CONTAINERD_DIR/_default/hosts.toml (every registry without a hosts.toml of its own; containerd's CRI needs config_path set to CONTAINERD_DIR)",
    )
    .option(
      '--containerd-dir <dir>',
      "containerd's registry hosts directory (config_path)",
      '/etc/containerd/certs.d',
    )
    .option('--mirror <host:port>', 'mirror address (default: mirror.listen, else 127.0.0.1:65001)')
    .option('--registry <host>', 'write for this registry only, not _default (repeatable)', collect)
    .option('--force', 'replace a hosts.toml that dfnode did not write')
    .option('--remove', "remove dfnode's hosts.toml instead")
    .action(async (flags: MirrorSetupFlags) => {
      const { mirrorSetupCommand } = await commands.mirrorSetup();
      await mirrorSetupCommand(flags);
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
    .option(
      '--control-socket <path>',
      'hand the pull to dfnode run on this socket (default: node.controlSocket, else STATE_DIR/control.sock)',
    )
    .option('--direct', 'pull from this process (gRPC to containerd), not through dfnode run')
    .action(async (refText: string, flags: NodeFlags & PullFlags) => {
      const { pullThroughDaemon } = await commands.throughDaemon();
      if (await pullThroughDaemon(refText, flags, signal)) return;
      const { pullCommand } = await commands.pull();
      await pullCommand(refText, flags, signal);
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
      '--control-socket <path>',
      'take commands (dfnode pull) on this unix socket (default node.controlSocket, else STATE_DIR/control.sock; off: none)',
    )
    .option(
      '--stop-fuse-manager',
      'full shutdown: stop the fuse manager of the state dir (unmounts every lazily mounted layer) and exit',
    )
    .option(
      '--record-reads <file>',
      'record the files (and ranges) containers read, in first-access order, as a prefetch list written to FILE on exit and on SIGUSR2 (implies --no-fuse-manager; direct reads off)',
    )
    .description('run the node daemon (cache, FUSE mounts, metrics endpoint)')
    .option(
      '--metrics-address <host:port>',
      'serve Prometheus metrics here (default 127.0.0.1:9877; empty: off)',
    )
    .action(async (flags: RunFlags) => {
      const { runCommand } = await commands.run();
      await runCommand(flags, signal);
    });

  addP2p(addRegistry(addCommon(program.command('seed'))))
    .description('run a seed: full copies of blobs fetched from the registry once, block server and tracker')
    .option('--metrics-address <host:port>', 'serve Prometheus metrics here (default: off)')
    .action(async (flags: NodeFlags) => {
      const { seedCommand } = await commands.seed();
      await seedCommand(flags, signal);
    });

  addP2p(addRegistry(addCommon(program.command('preheat'))))
    .description("fetch every block of an image into this node's cache through peers and seeds, then exit")
    .argument('<ref>', 'registry reference of a converted image (dfconvert output)')
    .option('--serve', 'after preheating, keep serving peers until SIGINT/SIGTERM')
    .option('--json', 'print the result as JSON')
    .option('--metrics-address <host:port>', 'serve Prometheus metrics here (default: off)')
    .option(
      '--control-socket <path>',
      'hand the preheat to dfnode run on this socket (default: node.controlSocket, else STATE_DIR/control.sock)',
    )
    .option('--direct', 'preheat from this process, not through dfnode run')
    .action(async (refText: string, flags: PreheatFlags) => {
      const { preheatThroughDaemon } = await commands.throughDaemon();
      if (await preheatThroughDaemon(refText, flags, signal)) return;
      const { preheatCommand } = await commands.preheat();
      await preheatCommand(refText, flags, signal);
    });

  addP2p(addRegistry(addCommon(program.command('get'))))
    .description(
      'fetch any file (an HTTP(S) URL or a registry blob) through the cluster (peers, seed, origin), verified and resumable',
    )
    .argument('<url|registry/repo@digest>', 'http:// or https:// URL of the file, or a registry blob')
    .requiredOption('-O, --output <file>', 'where to write the file (renamed into place once verified)')
    .option('--digest <sha256:hex>', 'the sha256 the file must have (checked end to end)')
    .option(
      '--header <"Name: value">',
      'header sent to the origin only, e.g. credentials (repeatable)',
      collect,
    )
    .option('--json', 'print the result as JSON')
    .option('-q, --quiet', 'no progress and no notes on stderr')
    .option(
      '--control-socket <path>',
      'hand the get to dfnode run on this socket (default: node.controlSocket, else STATE_DIR/control.sock)',
    )
    .option('--direct', 'fetch from this process, not through dfnode run')
    .action(async (url: string, flags: GetFlags) => {
      const { getCommand } = await commands.get();
      await getCommand(url, flags, signal);
    });

  program
    .command('fuse-manager', { hidden: true })
    .description('the long-lived FUSE server of `dfnode run` (started by it; see deploy/README.md)')
    .option('-c, --config <file>', 'JSON config file')
    .action(async (flags: { config?: string }) => {
      const { fuseManagerCommand } = await commands.fuseManager();
      await fuseManagerCommand(flags, signal);
    });

  program
    .command('warm-code-cache', { hidden: true })
    .description(
      "load every command's module and exit (npm run build: the bundle's code cache, bundle-entry.ts)",
    )
    .action(async () => {
      await Promise.all(Object.values(commands).map((load) => load()));
    });

  return program;
}

runMain('dfnode', (signal, argv) => buildProgram(signal).parseAsync(argv));
