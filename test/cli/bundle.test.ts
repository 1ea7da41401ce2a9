/**
 * The bundled CLIs (dist/bundle/, what the package's bins run; dfnode through bin/dfnode): they start, convert
 * an image with their worker threads, and hand `dfnode pull` to a control socket without any containerd, through
 * the native client (native/dfnode_pull.c, no Node) and through the Node CLI alike.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureNativeAddon, pullClientPath } from '../../native/build-addon.js';
import { ControlServer } from '../../src/daemon/control-server.js';
import { pullArgs } from '../../src/daemon/control-pull.js';
import { DfError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { run } from '../helpers/cli.js';
import { ensureFixture, fixtureUnavailable, REPO_ROOT } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/temp.js';

const pkg = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  version: string;
  bin: Record<string, string>;
};

/** A package bin run as npm's link runs it: the file itself (bin/dfnode is a shell script). */
function bundled(name: 'dfnode' | 'dfconvert', args: string[], env: NodeJS.ProcessEnv = {}) {
  const p = join(REPO_ROOT, pkg.bin[name]!);
  const target = name === 'dfnode' ? join(REPO_ROOT, 'dist', 'bundle', 'dfnode.js') : p;
  if (!existsSync(target)) throw new Error(`${target} is missing: run "npm run build" first (npm test does)`);
  return run(p, args, { env: { ...process.env, DFNODE_LOG_LEVEL: 'warn', ...env } });
}

/** Node's directory alone on PATH: `node` is found, nothing else of the test machine's is needed. */
const NODE_ONLY = { PATH: dirname(process.execPath) };
/** No `node` on PATH: only the native client can answer. */
const NO_NODE = { PATH: '/nonexistent' };

describe('bundled CLIs (package.json bin → dist/bundle)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfbundle-'));
  });
  afterAll(async () => cleanup?.());

  it('the bins (dist/bundle, and bin/dfnode in front of it) print the package version', async () => {
    expect(pkg.bin).toEqual({ dfnode: 'bin/dfnode', dfconvert: 'dist/bundle/dfconvert.js' });
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
    const built = ensureNativeAddon();
    expect(built, 'native/dfnode-pull must build here').toBeUndefined();
    const socket = join(dir, 'control.sock');
    const seen: unknown[] = [];
    const server = new ControlServer(socket, { logger: silentLogger });
    server.register('pull', {
      args: pullArgs,
      run: async (args, ctx) => {
        seen.push(args);
        if (args.ref === 'fail/me:1') throw DfError.notFound('registry says no: "fail/me:1" \u00e9\n\ttab');
        ctx.progress('layer 1/1 sha256:...: remote snapshot \u00e9 "q"');
        return { name: args.ref };
      },
    });
    await server.listen();
    const args = [
      'pull',
      '--control-socket',
      socket,
      '--address=/nowhere/containerd.sock',
      '-n',
      'k8s.io',
      '--plain-http',
      '--platform',
      'linux/arm64',
      'reg.example/app:1-dfb',
    ];
    try {
      // the native client (no node on PATH: it alone can answer) and the Node CLI give the same results
      const results = [];
      for (const env of [NO_NODE, { ...NODE_ONLY, DFNODE_NO_FAST_PULL: '1' }]) {
        seen.length = 0;
        const r = await bundled('dfnode', args, env);
        expect(r.code, r.stderr).toBe(0);
        expect(r.stdout).toBe('layer 1/1 sha256:...: remote snapshot \u00e9 "q"\n');
        expect(seen).toEqual([
          {
            ref: 'reg.example/app:1-dfb',
            address: '/nowhere/containerd.sock',
            namespace: 'k8s.io',
            snapshotter: 'dfnode',
            platform: 'linux/arm64',
          },
        ]);
        const f = await bundled('dfnode', ['pull', '--control-socket', socket, 'fail/me:1'], env);
        results.push({ code: f.code, stdout: f.stdout, stderr: f.stderr });
      }
      expect(results[0]).toEqual({
        code: 3,
        stdout: '',
        stderr: 'dfnode: error: registry says no: "fail/me:1" \u00e9\n\ttab\n',
      });
      expect(results[1]).toEqual(results[0]);

      // what the native client does not take goes to the Node CLI, arguments unchanged: a flag it does not
      // know, and a socket nobody serves (the Node CLI says so, then pulls here: no containerd, an error)
      seen.length = 0;
      const creds = await bundled(
        'dfnode',
        [...args.slice(0, -1), '--creds', 'u:p', args.at(-1)!],
        NODE_ONLY,
      );
      expect(seen).toEqual([]);
      expect(creds.code).not.toBe(0);
      expect(creds.stderr).toMatch(/dfnode: error: .*containerd/);
      const nobody = join(dir, 'nobody.sock');
      const none = await bundled(
        'dfnode',
        ['pull', '--control-socket', nobody, '--address', join(dir, 'no-ctd.sock'), 'a/b:1'],
        NODE_ONLY,
      );
      expect(none.stderr).toMatch(
        /no dfnode run answers on .*nobody\.sock \(ENOENT\); running it in this process instead/,
      );
      expect(none.code).not.toBe(0);
      // and without node on PATH, that hand-over is what fails (so the answers above were the client's)
      const noNode = await bundled('dfnode', ['pull', '--control-socket', nobody, 'a/b:1'], NO_NODE);
      expect(noNode.code).toBe(127);
      expect(noNode.stderr).toMatch(/cannot run node/);
      expect(existsSync(pullClientPath)).toBe(true);
    } finally {
      await server.stop();
    }
  });
});
