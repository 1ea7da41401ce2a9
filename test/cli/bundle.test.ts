/**
 * The bundled CLIs (dist/bundle/, what the package's bins run): they start, convert an image with their
 * worker threads, and hand `dfnode pull` to a control socket without any containerd.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { ControlServer } from '../../src/daemon/control-server.js';
import { silentLogger } from '../../src/log.js';
import { run } from '../helpers/cli.js';
import { ensureFixture, fixtureUnavailable, REPO_ROOT } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/temp.js';

const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  version: string;
  bin: Record<string, string>;
};

function bundled(name: 'dfnode' | 'dfconvert', args: string[], env: NodeJS.ProcessEnv = {}) {
  const p = join(REPO_ROOT, pkg.bin[name]!);
  if (!existsSync(p)) throw new Error(`${p} is missing: run "npm run build" first (npm test does)`);
  return run(process.execPath, [p, ...args], { env: { ...process.env, DFNODE_LOG_LEVEL: 'warn', ...env } });
}

describe('bundled CLIs (package.json bin → dist/bundle)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfbundle-'));
  });
  afterAll(async () => cleanup?.());

  it('the bins point into dist/bundle and print the package version', async () => {
    expect(pkg.bin).toEqual({ dfnode: 'dist/bundle/dfnode.js', dfconvert: 'dist/bundle/dfconvert.js' });
    for (const name of ['dfnode', 'dfconvert'] as const) {
      const r = await bundled(name, ['--version']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout.trim()).toBe(pkg.version);
    }
  });

  it.skipIf(fixtureUnavailable('busybox') !== null)(
    'dfconvert converts an OCI layout (worker threads in the bundle) and verifies it',
    async () => {
      const fx = await ensureFixture('busybox');
      const out = join(dir, 'out');
      const args = ['--work-dir', join(dir, 'work'), '--quiet'];
      const c = await bundled('dfconvert', [...args, '--json', fx.ref, `oci:${out}:dfb`]);
      expect(c.code, c.stderr).toBe(0);
      expect((JSON.parse(c.stdout) as { layers: unknown[] }).layers.length).toBeGreaterThan(0);
      const v = await bundled('dfconvert', ['verify', fx.ref, `oci:${out}:dfb`]);
      expect(v.code, v.stderr).toBe(0);
    },
  );

  it('dfnode pull hands its request to the control socket (flags mapped, progress printed, errors kept)', async () => {
    const socket = join(dir, 'control.sock');
    const seen: unknown[] = [];
    const server = new ControlServer(socket, { logger: silentLogger });
    server.register('pull', {
      args: z.record(z.string(), z.unknown()),
      run: async (args, ctx) => {
        seen.push(args);
        if (args.ref === 'fail/me:1') throw new Error('registry says no');
        ctx.progress('layer 1/1 sha256:...: remote snapshot');
        return { name: args.ref };
      },
    });
    await server.listen();
    try {
      const r = await bundled('dfnode', [
        'pull',
        '--control-socket',
        socket,
        '--address',
        '/nowhere/containerd.sock',
        '-n',
        'k8s.io',
        '--platform',
        'linux/arm64',
        'reg.example/app:1-dfb',
      ]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toBe('layer 1/1 sha256:...: remote snapshot\n');
      expect(seen).toEqual([
        {
          ref: 'reg.example/app:1-dfb',
          address: '/nowhere/containerd.sock',
          namespace: 'k8s.io',
          snapshotter: 'dfnode',
          platform: 'linux/arm64',
        },
      ]);
      const f = await bundled('dfnode', ['pull', '--control-socket', socket, 'fail/me:1']);
      expect(f.code).not.toBe(0);
      expect(f.stderr).toMatch(/dfnode: error: .*registry says no/);
    } finally {
      await server.stop();
    }
  });
});
