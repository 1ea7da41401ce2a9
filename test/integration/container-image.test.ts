/**
 * The dfnode container image (Containerfile, `npm run image` = deploy/image/build.sh): built here without any
 * registry (debootstrap bookworm minbase + this host's Node 20, buildah), it prints the package version, loads
 * the native addon and fuse-native with the libraries the image carries, and runs `dfnode seed` under podman
 * with host networking on a free loopback port: the block server refuses a request without the cluster token
 * (401) and takes one with the token from DFNODE_P2P_CLUSTER_TOKEN. An image built earlier in the same run
 * (same content key: dist/, addon, lockfile, Containerfile, base) is reused, not built again. The test removes
 * the containers it started and the images it built, also on failure.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { request } from 'undici';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER_TOKEN_HEADER } from '../../src/p2p/auth.js';
import { run } from '../helpers/cli.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { waitFor } from '../helpers/node.js';
import { freePort } from '../helpers/registry.js';
import { requireConditions, requireTools } from '../helpers/require.js';

const req = requireTools(['buildah', 'podman', 'debootstrap'], {
  check: () => (process.getuid?.() === 0 ? undefined : 'not root (debootstrap and buildah need root)'),
});
const addonBuilt = requireConditions({
  'native addon not built (npm run build:native)': existsSync(
    join(REPO_ROOT, 'native', 'build', 'Release', 'dfnode_fuse.node'),
  ),
});
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string })
  .version;
const TOKEN = randomBytes(16).toString('hex');

async function podman(args: string[], timeoutMs = 120_000) {
  return run('podman', args, { timeoutMs });
}

describe.skipIf(req.skip || addonBuilt.skip)('container image (podman)', () => {
  let image = '';
  /** Extra `podman run` flags for this host (see beforeAll); none where the runtime can set the defaults. */
  let runFlags: string[] = [];
  const removeImages: string[] = [];
  const containers: string[] = [];

  beforeAll(async () => {
    // dist/ is built by `npm test`; the image takes it as it is
    const build = join(REPO_ROOT, 'deploy', 'image', 'build.sh');
    const r = await run('bash', [build, '--no-build', '--no-tag', '--reuse'], { timeoutMs: 900_000 });
    const field = (name: string) => new RegExp(`^${name}: (.*)$`, 'm').exec(r.stdout)?.[1]?.trim() ?? '';
    // whatever this run made is removed afterwards, also when the build failed half-way
    if (field('base-imported')) removeImages.push(field('base-imported'));
    if (field('built') === 'yes') removeImages.unshift(field('image'));
    if (r.code !== 0) throw new Error(`npm run image failed (${r.code}):\n${r.stderr.slice(-4000)}`);
    image = field('image');
    expect(image).toMatch(/^localhost\/dfnode-build:[0-9a-f]{16}$/);

    // Some hosts' runtimes cannot raise rlimits to podman's defaults (no CAP_SYS_RESOURCE in the bounding
    // set: "error setting rlimit"); lowering them always works, and these containers need few.
    const probe = await podman(['run', '--rm', image, '--version']);
    if (probe.code !== 0 && /error setting rlimit/.test(probe.stderr)) {
      console.warn(
        '[note] this host cannot raise container rlimits: running with --ulimit nofile/nproc=4096',
      );
      runFlags = ['--ulimit', 'nofile=4096:4096', '--ulimit', 'nproc=4096:4096'];
    }
  }, 960_000);

  afterAll(async () => {
    for (const c of containers) await podman(['rm', '-f', '-t', '5', c]);
    for (const i of removeImages) await podman(['rmi', '-f', i]);
  }, 180_000);

  it('prints the package version', async () => {
    const r = await podman(['run', '--rm', ...runFlags, image, '--version']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
    // dfconvert is on PATH too
    const c = await podman(['run', '--rm', ...runFlags, '--entrypoint', 'dfconvert', image, '--version']);
    expect(c.stderr).toBe('');
    expect(c.stdout.trim()).toBe(VERSION);
  });

  it('dfnode pull goes through the C client, which hands a pull no daemon takes to the Node CLI', async () => {
    const files = await podman([
      ...['run', '--rm', ...runFlags, '--entrypoint', 'sh', image, '-c'],
      'test -x /opt/dfnode/native/build/Release/dfnode-pull && head -1 "$(readlink -f "$(command -v dfnode)")"',
    ]);
    expect(files.stderr).toBe('');
    expect(files.stdout.trim()).toBe('#!/bin/sh'); // the launcher, not the Node CLI itself
    // no daemon on the control socket: the same answer as the Node CLI's
    const args = [
      'pull',
      '--control-socket',
      '/tmp/none.sock',
      '--address',
      '/tmp/none.sock',
      'reg.example/x:1',
    ];
    const fast = await podman(['run', '--rm', ...runFlags, image, ...args]);
    const node = await podman(['run', '--rm', ...runFlags, '-e', 'DFNODE_NO_FAST_PULL=1', image, ...args]);
    expect(fast.code).not.toBe(0);
    expect([fast.code, fast.stdout, fast.stderr]).toEqual([node.code, node.stdout, node.stderr]);
    expect(fast.stderr).toMatch(/containerd socket \/tmp\/none.sock not found/);
  });

  it('loads the native addons and fuse-native (their libraries are in the image)', async () => {
    const script =
      "for (const a of ['dfnode_fuse', 'dfnode_convert', 'dfnode_net']) require(`/opt/dfnode/native/build/Release/${a}.node`); require('/opt/dfnode/node_modules/fuse-native'); console.log('loaded')";
    const r = await podman(['run', '--rm', ...runFlags, '--entrypoint', 'node', image, '-e', script]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('loaded');
  });

  /** Starts `dfnode seed` in a container on a free loopback port (another one if the port was taken). */
  async function startSeedContainer(): Promise<{ name: string; url: string; logs: () => Promise<string> }> {
    for (let tries = 0; ; tries++) {
      const name = `dfnode-image-test-${randomBytes(4).toString('hex')}`;
      const port = await freePort();
      containers.push(name);
      const r = await podman([
        ...['run', '-d', '--name', name, '--network', 'host', ...runFlags],
        ...['-e', `DFNODE_P2P_CLUSTER_TOKEN=${TOKEN}`, image],
        ...['seed', '--p2p-listen', `127.0.0.1:${port}`],
      ]);
      expect(r.code, r.stderr).toBe(0);
      const logs = async () => {
        const l = await podman(['logs', name]);
        return l.stdout + l.stderr;
      };
      const started = await waitFor(
        'the seed in the container to serve or stop',
        async () => {
          const state = await podman(['inspect', '-f', '{{.State.Running}}', name]);
          if (state.stdout.trim() !== 'true') return 'stopped';
          return /seed serving/.test(await logs()) && 'serving';
        },
        120_000,
      );
      if (started === 'serving')
        return { name, url: `http://127.0.0.1:${port}/blobs/sha256:${'0'.repeat(64)}`, logs };
      const out = await logs();
      if (tries >= 3 || !/EADDRINUSE|address already in use/i.test(out))
        throw new Error(`the seed container stopped:\n${out}`);
      await podman(['rm', '-f', name]);
      containers.splice(containers.indexOf(name), 1);
    }
  }

  it('runs dfnode seed with host networking: 401 without the cluster token, served with it', async () => {
    const { name, url, logs } = await startSeedContainer();
    const refused = await request(url);
    expect(refused.statusCode).toBe(401);
    expect(await refused.body.text()).toMatch(/cluster token/);

    // the token from the environment is the one it checks: a request carrying it gets past the check
    const allowed = await request(url, { headers: { [CLUSTER_TOKEN_HEADER]: TOKEN } });
    await allowed.body.text();
    expect(allowed.statusCode).not.toBe(401);

    // podman stop sends SIGTERM to dfnode (pid 1 in the container): it shuts down cleanly
    const stop = await podman(['stop', '-t', '20', name]);
    expect(stop.code, stop.stderr).toBe(0);
    const exit = await podman(['inspect', '-f', '{{.State.ExitCode}}', name]);
    expect(exit.stdout.trim(), await logs()).toBe('0');
    const rm = await podman(['rm', name]);
    expect(rm.code, rm.stderr).toBe(0);
    containers.splice(containers.indexOf(name), 1);
    expect((await podman(['container', 'exists', name])).code).toBe(1);
  }, 300_000);
});
