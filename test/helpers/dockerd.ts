/**
 * A private dockerd for tests: its own data root, exec root, pid file, socket, daemon.json and trust key, no
 * networking of its own (`--bridge=none --iptables=false --ip-masq=false`), and a containerd we started
 * (`--containerd`), so that neither a system dockerd nor a system containerd is ever used or touched.
 *
 *   const ctd = await startContainerd({ dir: join(work, 'c') });
 *   const d = await startDockerd({ dir: join(work, 'd'), containerd: ctd.socket, daemonJson: { ... } });
 *   await d.dockerOk(['pull', 'busybox']);
 *   await d.stop(); await ctd.stop();
 *
 * stop() stops dockerd by its pid (SIGTERM, SIGKILL after a grace period) and unmounts whatever it left
 * mounted below its directory (overlay2 mounts, its netns files), even when a test failed half way. The one
 * path outside it that dockerd 20.10 makes, the empty plugin directory /run/docker/plugins (fixed in its
 * code), is removed again when it was not there before.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run, type CliResult } from './cli.js';
import { unmountAllUnder } from './node.js';
import { hasTool, requireConditions, type Requirement } from './require.js';

/** dockerd and the docker CLI (the docker.io package), as conditions for requireConditions. */
export function requireDockerd(): Requirement {
  return requireConditions({
    'dockerd in PATH (Debian: apt-get install docker.io)': hasTool('dockerd'),
    'docker in PATH': hasTool('docker'),
  });
}

/** dockerd's storage driver here: overlay2 when the kernel has overlayfs, else vfs (slow but mount-free). */
export function dockerStorageDriver(): 'overlay2' | 'vfs' {
  try {
    return readFileSync('/proc/filesystems', 'utf8').includes('overlay') ? 'overlay2' : 'vfs';
  } catch {
    return 'vfs';
  }
}

export interface StartDockerdOptions {
  /** Everything of this dockerd lives below it. Keep it short: the socket path has a 108-byte limit. */
  dir: string;
  /** The containerd socket dockerd uses (a private one: test/helpers/containerd.ts). */
  containerd: string;
  /** daemon.json (e.g. `registry-mirrors`); given with --config-file so /etc/docker/daemon.json is not read. */
  daemonJson?: Record<string, unknown>;
  storageDriver?: string;
  /**
   * An HTTP proxy (`http://127.0.0.1:PORT`) for every registry connection dockerd makes beyond loopback (Go
   * never proxies loopback): a test points it at a listener of its own, so that nothing leaves the machine
   * (Docker falls back from its mirrors to registry-1.docker.io) and it can see whether dockerd tried.
   */
  proxy?: string;
  timeoutMs?: number;
}

export interface DockerRunOptions {
  timeoutMs?: number;
  clientConfig?: string;
}

export interface TestDockerd {
  pid: number;
  /** `unix://DIR/docker.sock`. */
  host: string;
  dir: string;
  log(): string;
  /**
   * `docker ARGS` against this daemon, with its own (empty) client config, or `clientConfig`: a directory
   * with a config.json (its `auths` are the credentials the CLI sends with a pull).
   */
  docker(args: string[], opts?: DockerRunOptions): Promise<CliResult>;
  /** Like docker(), throws with its output unless it exits 0; returns stdout. */
  dockerOk(args: string[], opts?: DockerRunOptions): Promise<string>;
  /** Rewrites daemon.json and sends dockerd SIGHUP (registry-mirrors is reloadable); resolves once reloaded. */
  reload(daemonJson: Record<string, unknown>): Promise<void>;
  stop(): Promise<void>;
}

/** Where dockerd looks for plugin sockets whatever its exec root (it creates /run/docker/plugins). */
const RUN_DOCKER = '/run/docker';

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live)
    if (c.pid && c.exitCode === null && c.signalCode === null) process.kill(c.pid, 'SIGKILL');
});

export async function startDockerd(opts: StartDockerdOptions): Promise<TestDockerd> {
  const dir = opts.dir;
  const sock = join(dir, 'docker.sock');
  const host = `unix://${sock}`;
  const configFile = join(dir, 'daemon.json');
  const runDockerWasThere = existsSync(RUN_DOCKER);
  await mkdir(join(dir, 'client'), { recursive: true });
  // deprecated-key-path (no flag in 20.10): the trust key it would otherwise write to /etc/docker/key.json
  const writeDaemonJson = (extra?: Record<string, unknown>) =>
    writeFile(
      configFile,
      JSON.stringify({ 'deprecated-key-path': join(dir, 'key.json'), ...extra }, null, 2),
    );
  await writeDaemonJson(opts.daemonJson);
  const child = spawn(
    'dockerd',
    [
      '--config-file',
      configFile,
      '--data-root',
      join(dir, 'data'),
      '--exec-root',
      join(dir, 'exec'),
      '--pidfile',
      join(dir, 'docker.pid'),
      '-H',
      host,
      '--containerd',
      opts.containerd,
      '--storage-driver',
      opts.storageDriver ?? dockerStorageDriver(),
      '--bridge=none',
      '--iptables=false',
      '--ip-masq=false',
      '--ip6tables=false',
      '--userland-proxy=false',
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        ...(opts.proxy
          ? { HTTP_PROXY: opts.proxy, HTTPS_PROXY: opts.proxy, NO_PROXY: '127.0.0.1,localhost,::1' }
          : {}),
      },
    },
  );
  live.add(child);
  let log = '';
  // since the last reload() began (log keeps only its tail)
  let sinceReload = '';
  const onLog = (d: string) => {
    log = (log + d).slice(-200_000);
    sinceReload = (sinceReload + d).slice(-200_000);
  };
  child.stdout!.setEncoding('utf8').on('data', onLog);
  child.stderr!.setEncoding('utf8').on('data', onLog);
  const exited = new Promise<void>((res) =>
    child.once('exit', () => {
      live.delete(child);
      res();
    }),
  );
  const gone = () => child.exitCode !== null || child.signalCode !== null;

  const docker = (args: string[], o: DockerRunOptions = {}) =>
    run('docker', args, {
      env: { ...process.env, DOCKER_HOST: host, DOCKER_CONFIG: o.clientConfig ?? join(dir, 'client') },
      timeoutMs: o.timeoutMs ?? 180_000,
    });
  const dockerOk = async (args: string[], o: DockerRunOptions = {}) => {
    const r = await docker(args, o);
    if (r.code !== 0) throw new Error(`docker ${args.join(' ')} failed (${r.code}): ${r.stderr}${r.stdout}`);
    return r.stdout;
  };

  const reload = async (daemonJson: Record<string, unknown>) => {
    await writeDaemonJson(daemonJson);
    sinceReload = '';
    child.kill('SIGHUP');
    const deadline = Date.now() + 30_000;
    while (!/Reloaded configuration|Error reloading/i.test(sinceReload)) {
      if (gone() || Date.now() > deadline) throw new Error(`dockerd did not reload:\n${log.slice(-4000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    if (/Error reloading/i.test(sinceReload)) throw new Error(`dockerd reload failed:\n${sinceReload}`);
  };

  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    if (!gone()) {
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(t);
    }
    await unmountAllUnder(dir);
    // rmdir: only while empty, so nothing another dockerd put there is removed
    if (!runDockerWasThere)
      for (const d of [join(RUN_DOCKER, 'plugins'), RUN_DOCKER]) await rmdir(d).catch(() => undefined);
  };

  try {
    const deadline = Date.now() + (opts.timeoutMs ?? 60_000);
    for (;;) {
      if (gone()) throw new Error(`dockerd exited:\n${log.slice(-4000)}`);
      if (
        (await stat(sock).catch(() => undefined)) &&
        (await docker(['version'], { timeoutMs: 10_000 })).code === 0
      )
        break;
      if (Date.now() > deadline)
        throw new Error(`timed out waiting for dockerd on ${sock}:\n${log.slice(-4000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return { pid: child.pid!, host, dir, log: () => log, docker, dockerOk, reload, stop };
}
