/**
 * Restart: `dfnode run` restarts (SIGTERM, SIGKILL) while containers run; with the FUSE manager (the default)
 * the layer mounts outlive it, so running containers keep reading their lazily loaded files, and new
 * containers start afterwards. Killing the FUSE manager itself is recovered by the next `dfnode run` (dead
 * mounts cleaned, layers mounted again); containers that were running then lose their lazy files
 * (documented in deploy/README.md).
 *
 * Real containerd 1.6, runc, docker-registry, images pushed with skopeo and converted with dfconvert.
 * Needs root, /dev/fuse, overlayfs, containerd, ctr, runc, docker-registry, skopeo, umoci and busybox (host
 * busybox is bind-mounted into the multilayer image, which has no shell); skips with a printed reason otherwise.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runCli } from '../helpers/cli.js';
import {
  dfnodeMountsUnder,
  pushAndConvertLayout,
  removeWorkDir,
  requireContainerd,
  startContainerd,
  startDfnodeRun,
  type DfnodeRun,
  type TestContainerd,
} from '../helpers/containerd.js';
import { ensureFixture } from '../helpers/fixtures.js';
import { mountsUnder } from '../helpers/node.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { sha256Hex } from '../helpers/digest.js';

const req = requireContainerd(['busybox']);

const BB = '/busybox';
/** Files of the multilayer image the tests read (relative to /), with their sha256 from the source image. */
const FILES = [
  'data/layer2.txt',
  'data/big/big.bin',
  'data/big/odd-size.bin',
  'data/dup/a.txt',
  'data/small/d03/f005.txt',
  'data/small/d11/f042.txt',
  'data/small/d20/f077.txt',
  'data/small/d29/f099.txt',
];

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st[st.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

async function waitGone(pid: number, ms = 30_000): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (alive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  return !alive(pid);
}

describe.skipIf(req.skip)(
  'dfnode restart with the FUSE manager: running containers keep their files (real containerd, runc, registry)',
  () => {
    let dir: string;
    let reg: TestRegistry;
    let node: DfnodeRun;
    let ctd: TestContainerd;
    let ref: string;
    const expected: Record<string, string> = {};
    const managers = new Set<number>();
    let n = 0;
    const id = (what: string) => `${what}-${++n}`;
    const nodeDir = () => join(dir, 'dfnode');
    const startNode = async () => {
      node = await startDfnodeRun({ dir: nodeDir(), fuseManager: true });
      const pid = managerPid();
      expect(
        pid,
        `no fuse manager pid file; dfnode run said:\n${node.stdout()}${node.stderr()}`,
      ).toBeGreaterThan(0);
      managers.add(pid!);
      return pid!;
    };
    const managerPid = (): number | undefined => {
      const f = join(nodeDir(), 'state', 'fuse-manager.pid');
      return existsSync(f) ? Number.parseInt(readFileSync(f, 'utf8'), 10) : undefined;
    };

    beforeAll(async () => {
      await mkdir('/tmp/dfnode-ctd', { recursive: true });
      dir = await mkdtemp('/tmp/dfnode-ctd/r-');
      reg = await startRegistry();
      const ml = await ensureFixture('multilayer');
      ref = (await pushAndConvertLayout(reg.host, ml, 'multilayer', dir)).dfb;
      // expected contents, from the source image unpacked by umoci
      const bundle = join(dir, 'ml-bundle');
      const u = await run('umoci', ['unpack', '--image', `${ml.dir}:${ml.tag}`, bundle]);
      if (u.code !== 0) throw new Error(`umoci unpack failed: ${u.stderr}`);
      for (const f of FILES) expected[f] = sha256Hex(await readFile(join(bundle, 'rootfs', f)));
      await startNode();
      ctd = await startContainerd({ dir: join(dir, 'ctd'), snapshotterSocket: node.socket });
      // through dfnode run's control socket (with the fuse manager; containerd-pull.test.ts covers in-process)
      const p = await runCli('dfnode', [
        ...['pull', '--control-socket', node.controlSocket, '--address', ctd.socket, ref],
      ]);
      if (p.code !== 0 || p.stderr) throw new Error(`dfnode pull failed: ${p.stderr}`);
    });

    afterAll(async () => {
      await ctd?.stop().catch(() => undefined);
      await node?.stop().catch(() => undefined);
      for (const pid of managers) {
        if (!alive(pid)) continue;
        process.kill(pid, 'SIGTERM');
        if (!(await waitGone(pid, 30_000))) process.kill(pid, 'SIGKILL');
      }
      await reg?.stop().catch(() => undefined);
      if (dir) await removeWorkDir(dir);
    });

    /** A long-running container of the multilayer image with the host's busybox at /bb. */
    async function startSleeper(): Promise<string> {
      const cid = id('sleeper');
      await ctd.ctrOk([
        'run',
        '-d',
        '--snapshotter',
        'dfnode',
        '--mount',
        `type=bind,src=/bin/busybox,dst=${BB},options=rbind:ro`,
        ref,
        cid,
        BB,
        'sleep',
        '600',
      ]);
      return cid;
    }

    /** sha256 of `files` read inside the running container `cid` (a new exec each time). */
    async function hashesIn(cid: string, files: string[]) {
      const r = await ctd.ctr(
        ['tasks', 'exec', '--exec-id', id('x'), cid, BB, 'sha256sum', ...files.map((f) => `/${f}`)],
        { timeoutMs: 120_000 },
      );
      const got: Record<string, string> = {};
      for (const line of r.stdout.split('\n')) {
        const m = /^([0-9a-f]{64})\s+\/(.+)$/.exec(line);
        if (m) got[m[2]!] = m[1]!;
      }
      return { code: r.code, got, out: (r.stdout + r.stderr).trim() };
    }

    const want = (files: string[]) => Object.fromEntries(files.map((f) => [f, expected[f]!]));

    /**
     * After an abrupt stop containerd's connection to the proxy snapshotter is in gRPC backoff (up to a few
     * seconds in 1.6) and calls fail fast until it reconnects by itself; wait for that.
     */
    async function waitSnapshotterReachable(): Promise<void> {
      const deadline = Date.now() + 60_000;
      for (;;) {
        const r = await ctd.ctr(['snapshots', '--snapshotter', 'dfnode', 'ls'], { timeoutMs: 15_000 });
        if (r.code === 0) return;
        if (Date.now() > deadline) throw new Error(`containerd does not reach dfnode again: ${r.stderr}`);
        await new Promise((res) => setTimeout(res, 250));
      }
    }

    async function newContainerReads(files: string[]): Promise<void> {
      await waitSnapshotterReachable();
      const out = await ctd.ctrOk([
        'run',
        '--rm',
        '--snapshotter',
        'dfnode',
        '--mount',
        `type=bind,src=/bin/busybox,dst=${BB},options=rbind:ro`,
        ref,
        id('new'),
        BB,
        'sha256sum',
        ...files.map((f) => `/${f}`),
      ]);
      for (const f of files) expect(out).toContain(`${expected[f]}  /${f}`);
    }

    async function stopTask(cid: string): Promise<void> {
      await ctd.ctr(['tasks', 'kill', '-s', 'SIGKILL', cid]);
      for (let i = 0; i < 50; i++) {
        const r = await ctd.ctr(['tasks', 'rm', cid]);
        if (r.code === 0 || /not found/.test(r.stderr)) break;
        await new Promise((res) => setTimeout(res, 100));
      }
      await ctd.ctr(['containers', 'rm', cid]);
    }

    it('the pull took the background path: the probe mount through the fuse manager worked', () => {
      expect(node.stderr()).not.toMatch(/probe FUSE mount failed/);
      expect(node.stderr()).toMatch(/layer committed, mounting/);
      // no layer took the path of a snapshotter that has not seen a mount work (mount, then answer)
      expect(node.stderr()).not.toMatch(/layer mounted lazily/);
    });

    for (const how of ['SIGTERM', 'SIGKILL'] as const) {
      it(`${how} of dfnode run: the running container reads files it never read before; new containers start`, async () => {
        const manager = managerPid()!;
        const cid = await startSleeper();
        try {
          const before = ['data/layer2.txt'];
          const b = await hashesIn(cid, before);
          expect(b.got, b.out).toEqual(want(before));

          if (how === 'SIGTERM') await node.stop();
          else await node.kill();
          expect(alive(manager), 'the fuse manager outlives dfnode run').toBe(true);
          // while dfnode run is down: the container still reads (the manager serves its layers)
          const down = how === 'SIGTERM' ? ['data/big/odd-size.bin'] : ['data/small/d03/f005.txt'];
          const d = await hashesIn(cid, down);
          expect(d.got, d.out).toEqual(want(down));

          expect(await startNode(), 'the new dfnode run adopts the running manager').toBe(manager);
          expect(node.stdout()).not.toMatch(/\(started\)/);
          const after =
            how === 'SIGTERM'
              ? ['data/layer2.txt', 'data/big/big.bin', 'data/dup/a.txt']
              : ['data/layer2.txt', 'data/small/d11/f042.txt', 'data/small/d20/f077.txt'];
          const a = await hashesIn(cid, after);
          expect(a.code, a.out).toBe(0);
          expect(a.got, a.out).toEqual(want(after));
          // the mounts were adopted, not made again
          expect(node.stderr()).not.toMatch(/removed a stale mount/);
          await newContainerReads(['data/layer2.txt', 'data/small/d29/f099.txt']);
        } finally {
          await stopTask(cid);
        }
      });
    }

    it('SIGKILL of the fuse manager: dfnode run exits; the next start cleans the dead mounts and mounts again', async () => {
      const manager = managerPid()!;
      const cid = await startSleeper();
      try {
        const b = await hashesIn(cid, ['data/layer2.txt']);
        expect(b.got, b.out).toEqual(want(['data/layer2.txt']));
        process.kill(manager, 'SIGKILL');
        expect(await waitGone(manager)).toBe(true);
        // dfnode run notices that its mounts are dead and exits, for its supervisor to restart it
        const ex = await Promise.race([
          node.exited,
          new Promise<'still running'>((r) => setTimeout(() => r('still running'), 20_000)),
        ]);
        expect(ex).toEqual({ code: 1, signal: null });
        expect(node.stderr()).toMatch(/fuse manager is gone/);

        const fresh = await startNode();
        expect(fresh).not.toBe(manager);
        expect(node.stdout()).toMatch(/\(started\)/);
        // no dead FUSE mount is left: every one below the snapshotter root answers
        const fuse = (await mountsUnder(node.snapshotterRoot)).filter((m) => m.fstype.startsWith('fuse'));
        expect(fuse.length).toBeGreaterThan(0);
        for (const m of fuse) {
          const s = await run('stat', ['-f', '-c', '%i', m.mountpoint], { timeoutMs: 10_000 });
          expect(s.code, `${m.mountpoint}: ${s.stderr}`).toBe(0);
        }
        await newContainerReads(['data/layer2.txt', 'data/big/big.bin', 'data/dup/a.txt']);
        // The running container's overlay still points at the dead mounts: reads of files it has not read
        // before fail (ENOTCONN). Documented limitation (deploy/README.md): the manager must not be killed.
        const old = await hashesIn(cid, ['data/small/d20/f077.txt']);
        console.log(
          `[restart] running container after the fuse manager was killed: exit ${old.code}; ${old.out.slice(0, 200)}`,
        );
        expect(old.got['data/small/d20/f077.txt']).toBeUndefined();
      } finally {
        await stopTask(cid);
      }
    });

    it('full shutdown: containerd, dfnode run and dfnode run --stop-fuse-manager leave no mounts', async () => {
      const manager = managerPid()!;
      await ctd.stop();
      await node.stop();
      expect(alive(manager)).toBe(true);
      const s = await runCli('dfnode', ['run', '-c', node.configPath, '--stop-fuse-manager']);
      expect(s.code, s.stderr).toBe(0);
      expect(s.stdout).toMatch(new RegExp(`fuse manager \\(pid ${manager}\\) stopped`));
      expect(await waitGone(manager, 5000)).toBe(true);
      expect(existsSync(join(nodeDir(), 'state', 'fuse-manager.sock'))).toBe(false);
      expect(await dfnodeMountsUnder(dir)).toEqual([]);
      const again = await runCli('dfnode', ['run', '-c', node.configPath, '--stop-fuse-manager']);
      expect(again.stdout).toMatch(/no fuse manager running/);
    });
  },
);
