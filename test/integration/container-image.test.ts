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
import { readFileSync } from 'node:fs';
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
  'native addon not built (npm run build:native)': (() => {
    try {
      readFileSync(join(REPO_ROOT, 'native', 'build', 'Release', 'dfnode_fuse.node'));
      return true;
    } catch {
      return false;
    }
  })(),
});
const VERSION = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string })
  .version;
const TOKEN = randomBytes(16).toString('hex');
// Some hosts' runtimes cannot raise rlimits (no CAP_SYS_RESOURCE in the bounding set: "error setting rlimit");
// lowering them always works, and a test seed needs few.
const ULIMITS = ['--ulimit', 'nofile=4096:4096', '--ulimit', 'nproc=4096:4096'];

async function podman(args: string[], timeoutMs = 120_000) {
  return run('podman', args, { timeoutMs });
}

describe.skipIf(req.skip || addonBuilt.skip)('container image (podman)', () => {
  let image = '';
  const removeImages: string[] = [];
  const containers: string[] = [];

  beforeAll(async () => {
    // dist/ is built by `npm test`; the image takes it as it is
    const r = await run(
      'bash',
      [join(REPO_ROOT, 'deploy', 'image', 'build.sh'), '--no-build', '--no-tag', '--reuse'],
      {
        timeoutMs: 900_000,
      },
    );
    const field = (name: string) => new RegExp(`^${name}: (.*)$`, 'm').exec(r.stdout)?.[1]?.trim() ?? '';
    // whatever this run made is removed afterwards, even when the build failed half-way
    if (field('built') === 'yes') removeImages.push(field('image'));
    if (field('base-imported')) removeImages.push(field('base-imported'));
    if (r.code !== 0) throw new Error(`npm run image failed (${r.code}):\n${r.stderr.slice(-4000)}`);
    image = field('image');
    expect(image).toMatch(/^localhost\/dfnode-build:[0-9a-f]{16}$/);
  }, 960_000);

  afterAll(async () => {
    for (const c of containers) await podman(['rm', '-f', '-t', '5', c]);
    for (const i of removeImages) await podman(['rmi', '-f', i]);
  }, 180_000);

  it('prints the package version', async () => {
    const r = await podman(['run', '--rm', ...ULIMITS, image, '--version']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(VERSION);
  });

  it('loads the native addon and fuse-native (their libraries are in the image)', async () => {
    const script =
      "require('/opt/dfnode/native/build/Release/dfnode_fuse.node'); require('/opt/dfnode/node_modules/fuse-native'); console.log('loaded')";
    const r = await podman(['run', '--rm', ...ULIMITS, '--entrypoint', 'node', image, '-e', script]);
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('loaded');
  });

  it('runs dfnode seed with host networking: 401 without the cluster token, served with it', async () => {
    const name = `dfnode-image-test-${randomBytes(4).toString('hex')}`;
    const port = await freePort();
    containers.push(name);
    const r = await podman([
      'run',
      '-d',
      '--name',
      name,
      '--network',
      'host',
      ...ULIMITS,
      '-e',
      `DFNODE_P2P_CLUSTER_TOKEN=${TOKEN}`,
      image,
      'seed',
      '--p2p-listen',
      `127.0.0.1:${port}`,
    ]);
    expect(r.code, r.stderr).toBe(0);
    const url = `http://127.0.0.1:${port}/blobs/sha256:${'0'.repeat(64)}`;
    const logs = async () => {
      const l = await podman(['logs', name]);
      return l.stdout + l.stderr;
    };
    const refused = await waitFor(
      'the seed in the container to answer',
      async () => {
        const state = await podman(['inspect', '-f', '{{.State.Running}}', name]);
        if (state.stdout.trim() !== 'true') throw new Error(`the seed container stopped:\n${await logs()}`);
        try {
          return await request(url);
        } catch {
          return undefined; // not listening yet
        }
      },
      120_000,
    );
    expect(refused.statusCode).toBe(401);
    expect(await refused.body.text()).toMatch(/cluster token/);
    expect(await logs()).toMatch(/seed serving/);

    // the token from the environment is the one it checks: a request carrying it gets past the check
    const allowed = await request(url, { headers: { [CLUSTER_TOKEN_HEADER]: TOKEN } });
    await allowed.body.text();
    expect(allowed.statusCode).not.toBe(401);

    const stop = await podman(['rm', '-f', '-t', '10', name]);
    expect(stop.code, stop.stderr).toBe(0);
    containers.splice(containers.indexOf(name), 1);
    expect((await podman(['container', 'exists', name])).code).toBe(1);
  });
});
