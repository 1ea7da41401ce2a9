/**
 * dfnode as containerd's snapshotter, end to end: a private containerd 1.6 (own root, state, socket; proxy
 * plugin → `dfnode run`), a real docker-registry, images pushed with skopeo and converted with dfconvert,
 * `dfnode pull` and `ctr run --snapshotter dfnode` with runc.
 *
 * Needs root, /dev/fuse, overlayfs, containerd, ctr, runc, docker-registry, skopeo, umoci, busybox-static and
 * debootstrap (fixtures); skips locally with a printed reason when they are missing (CI must not skip).
 */
import { mkdir, mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, runCli } from '../helpers/cli.js';
import {
  buildLayeredBusybox,
  dfnodeMountsUnder,
  pushAndConvertLayout,
  removeWorkDir,
  requireContainerd,
  startContainerd,
  startDfnodeRun,
  type DfnodeRun,
  type TestContainerd,
} from '../helpers/containerd.js';
import { ensureFixture, REPO_ROOT } from '../helpers/fixtures.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';

const req = requireContainerd(['busybox', 'debootstrap']);

describe.skipIf(req.skip)(
  'containerd + dfnode snapshotter: dfnode pull, ctr run (real containerd, runc, registry)',
  () => {
    let dir: string;
    let reg: TestRegistry;
    let node: DfnodeRun;
    let ctd: TestContainerd;
    const images: Record<string, { source: string; dfb: string }> = {};
    let n = 0;
    const id = (what: string) => `${what}-${++n}`;

    beforeAll(async () => {
      await mkdir('/tmp/dfnode-ctd', { recursive: true });
      // short: containerd's and dfnode's sockets live below it
      dir = await mkdtemp('/tmp/dfnode-ctd/p-');
      reg = await startRegistry();
      const bb = await ensureFixture('busybox');
      images.busybox = await pushAndConvertLayout(reg.host, bb, 'busybox', dir);
      images.layered = await pushAndConvertLayout(
        reg.host,
        await buildLayeredBusybox(bb.dir, join(dir, 'layered-oci')),
        'layered',
        dir,
      );
      images.multilayer = await pushAndConvertLayout(
        reg.host,
        await ensureFixture('multilayer'),
        'multilayer',
        dir,
      );
      images.debian = await pushAndConvertLayout(reg.host, await ensureFixture('debian'), 'debian', dir);
      node = await startDfnodeRun({ dir: join(dir, 'dfnode') });
      ctd = await startContainerd({ dir: join(dir, 'ctd'), snapshotterSocket: node.socket });
    });

    afterAll(async () => {
      await ctd?.stop().catch(() => undefined);
      await node?.stop().catch(() => undefined);
      await reg?.stop().catch(() => undefined);
      if (dir) await removeWorkDir(dir);
    });

    const pull = (ref: string, extra: string[] = []) =>
      runCli('dfnode', ['pull', '--plain-http', '--address', ctd.socket, ...extra, ref]);

    /** Runs the host's busybox in an image without a shell (bind-mounted as /busybox; argv[1] names the applet). */
    const withHostBusybox = (ref: string, applet: string[], namespace?: string) =>
      ctd.ctrOk(
        [
          ...['run', '--rm', '--snapshotter', 'dfnode'],
          ...['--mount', 'type=bind,src=/bin/busybox,dst=/busybox,options=rbind:ro'],
          ...[ref, id('bb'), '/busybox', ...applet],
        ],
        namespace ? { namespace } : undefined,
      );

    /**
     * Removes images from a namespace, then their snapshots: containerd's GC removes the unreferenced ones
     * (deepest first) through the proxy snapshotter, `ctr snapshots rm` what is left, leaves first. Returns
     * the snapshots still listed after a minute ('' when none).
     */
    async function removeImages(refs: string[], namespace?: string): Promise<string> {
      const ns = namespace ? { namespace } : undefined;
      for (const r of refs) await ctd.ctr(['images', 'rm', '--sync', r], ns);
      const deadline = Date.now() + 60_000;
      for (;;) {
        const left = (await ctd.ctrOk(['snapshots', '--snapshotter', 'dfnode', 'ls'], ns))
          .trim()
          .split('\n')
          .slice(1)
          .join('\n');
        if (!left || Date.now() > deadline) return left;
        for (const line of left.split('\n').reverse()) {
          const key = line.split(/\s+/)[0];
          if (key) await ctd.ctr(['snapshots', '--snapshotter', 'dfnode', 'rm', key], ns);
        }
      }
    }

    async function runIn(ref: string, script: string, extra: string[] = []): Promise<string> {
      return ctd.ctrOk([
        'run',
        '--rm',
        '--snapshotter',
        'dfnode',
        ...extra,
        ref,
        id('c'),
        '/bin/sh',
        '-c',
        script,
      ]);
    }

    it('busybox: dfnode pull, then ctr run prints the expected output; no layer in the content store', async () => {
      const r = await pull(images.busybox!.dfb);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/remote snapshot/);
      expect(r.stdout).toMatch(/ready/);
      expect(await runIn(images.busybox!.dfb, 'echo hello from dfnode; busybox | head -1')).toMatch(
        /^hello from dfnode\nBusyBox v/,
      );
      // lazily pulled: containerd holds manifest and config, not the layer blob
      const content = await ctd.ctrOk(['content', 'ls', '-q']);
      const m = (await (
        await fetch(`${reg.url}/v2/busybox/manifests/1-dfb`, {
          headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
        })
      ).json()) as { layers: { digest: string }[]; config: { digest: string } };
      expect(content).toContain(m.config.digest);
      for (const l of m.layers) expect(content).not.toContain(l.digest);
      // pulling again is idempotent: the snapshots exist, the image record is updated
      const again = await pull(images.busybox!.dfb);
      expect(again.code, again.stderr).toBe(0);
      expect(again.stdout).toMatch(/present/);
    });

    it('layered busybox: whiteouts, opaque directories and per-container upper dirs inside running containers', async () => {
      const ref = images.layered!.dfb;
      const r = await pull(ref);
      expect(r.code, r.stderr).toBe(0);
      const out = await runIn(
        ref,
        [
          'cat /data/keep.txt',
          'test ! -e /data/gone.txt && echo gone-absent',
          'ls -A /data/opq | tr "\\n" " "; echo',
          'test ! -e /data/opq/old.txt && test ! -e /data/opq/sub && echo opaque-hides-lower',
          'cat /data/lower-only/a',
          'echo written > /data/keep.txt; echo new > /data/created.txt; rm /data/lower-only/a',
          'cat /data/keep.txt /data/created.txt; test ! -e /data/lower-only/a && echo deleted-in-container',
        ].join('; '),
      );
      expect(out).toBe(
        'keep\ngone-absent\nnew.txt \nopaque-hides-lower\na\nwritten\nnew\ndeleted-in-container\n',
      );
      // a second container of the same image sees none of the first one's writes
      expect(
        await runIn(
          ref,
          'cat /data/keep.txt; test ! -e /data/created.txt && echo no-leak; cat /data/lower-only/a',
        ),
      ).toBe('keep\nno-leak\na\n');
    });

    it('multilayer (no shell in the image; host busybox bind-mounted): deletions, opaque dir, layer contents', async () => {
      const ref = images.multilayer!.dfb;
      const r = await pull(ref);
      expect(r.code, r.stderr).toBe(0);
      const out = await withHostBusybox(ref, [
        'sh',
        '-c',
        [
          '/busybox cat /data/layer2.txt',
          'for p in to-delete-file to-delete-dir hand-whiteout opaque-dir/old1 links/hard-b; do /busybox test -e /data/$p && echo "present: $p"; done',
          '/busybox ls /data/opaque-dir | /busybox tr "\\n" " "; echo',
          '/busybox cat /data/opaque-dir/kept-by-name',
          '/busybox wc -c < /data/big/big.bin',
        ].join('; '),
      ]);
      expect(out).toBe(
        'layer 2 was here\nkept-by-name new-sub new.txt top.txt \nkept name, new content\n8388608\n',
      );
    });

    it('debian: runs dpkg and reads /etc/debian_version', async () => {
      const ref = images.debian!.dfb;
      const r = await pull(ref);
      expect(r.code, r.stderr).toBe(0);
      // single quotes: the shell must not expand ${Package}
      const out = await runIn(ref, "cat /etc/debian_version; dpkg-query -W -f '${Package}\\n' dpkg");
      expect(out).toMatch(/^\d+(\.\d+)*\ndpkg\n$/);
    });

    it("dfnode pull through dfnode run's control socket: the same image record and snapshots as the direct path", async () => {
      const ref = images.multilayer!.dfb;
      const direct = await pull(ref, ['--direct', '-n', 'direct']);
      expect(direct.code, direct.stderr).toBe(0);
      // containerd's API definitions hidden from the CLI: it can only succeed by handing the pull to the daemon
      const viaDaemon = await runCli(
        'dfnode',
        ['pull', '--control-socket', node.controlSocket, '--address', ctd.socket, '-n', 'daemon', ref],
        { env: { DFNODE_PROTO_DIR: join(dir, 'no-protos-here') } },
      );
      expect(viaDaemon.code, viaDaemon.stderr).toBe(0);
      expect(viaDaemon.stderr).toBe('');
      expect(viaDaemon.stdout.replace(/[0-9a-f]{12}/g, 'X')).toBe(
        direct.stdout.replace(/[0-9a-f]{12}/g, 'X'),
      );
      const view = async (namespace: string) => ({
        images: await ctd.ctrOk(['images', 'ls'], { namespace }),
        snapshots: await ctd.ctrOk(['snapshots', '--snapshotter', 'dfnode', 'ls'], { namespace }),
      });
      // bin/dfnode, what users run: its native client hands the pull over without Node (none on PATH here)
      const fast = await run(
        join(REPO_ROOT, 'bin', 'dfnode'),
        ['pull', '--control-socket', node.controlSocket, '--address', ctd.socket, '-n', 'fast', ref],
        { env: { PATH: '/nonexistent' } },
      );
      expect(fast.code, fast.stderr).toBe(0);
      expect(fast.stdout.replace(/[0-9a-f]{12}/g, 'X')).toBe(direct.stdout.replace(/[0-9a-f]{12}/g, 'X'));
      const a = await view('direct');
      expect(a.snapshots.trim().split('\n').length).toBeGreaterThan(2);
      expect(await view('daemon')).toEqual(a);
      expect(await view('fast')).toEqual(a);
      const out = await withHostBusybox(ref, ['cat', '/data/layer2.txt'], 'daemon');
      expect(out).toBe('layer 2 was here\n');
      // a control socket nobody serves: said on stderr, then the direct path
      const fallback = await pull(ref, ['--control-socket', join(dir, 'nobody.sock'), '-n', 'fallback']);
      expect(fallback.code, fallback.stderr).toBe(0);
      expect(fallback.stderr).toMatch(
        /no dfnode run answers on .*nobody\.sock \(ENOENT\); running it in this process instead/,
      );
      expect(await view('fallback')).toEqual(a);
      // leave no mounts behind for the removal test below
      for (const ns of ['direct', 'daemon', 'fast', 'fallback'])
        expect(await removeImages([ref], ns)).toBe('');
    });

    it("dfnode preheat through dfnode run's control socket: every block into the daemon's own cache", async () => {
      const ref = images.layered!.dfb;
      const m = (await (
        await fetch(`${reg.url}/v2/layered/manifests/1-dfb`, {
          headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
        })
      ).json()) as { layers: { digest: string; size: number }[] };
      // no fallback (stderr empty): the daemon preheated, into its cache (status below reads that one)
      const r = await runCli('dfnode', ['preheat', '--control-socket', node.controlSocket, '--json', ref]);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      const out = JSON.parse(r.stdout) as { layers: number; bytes: number };
      expect(out.layers).toBe(m.layers.length);
      expect(out.bytes).toBe(m.layers.reduce((a, l) => a + l.size, 0));
      const st = await runCli('dfnode', ['status', '--json', '-c', node.configPath]);
      expect(st.code, st.stderr).toBe(0);
      const blobs = (JSON.parse(st.stdout) as { blobs: { digest: string; complete: boolean }[] }).blobs;
      for (const l of m.layers)
        expect(blobs.find((b) => b.digest === l.digest)?.complete, l.digest).toBe(true);
      // a bad reference is refused by the daemon with a clear error
      const bad = await runCli('dfnode', ['preheat', '--control-socket', node.controlSocket, 'Not A Ref']);
      expect(bad.code).not.toBe(0);
      expect(bad.stderr).toMatch(/dfnode: error: /);
    });

    it('an unconverted image runs too: ctr images pull --snapshotter dfnode unpacks into ordinary snapshots', async () => {
      const ref = images.busybox!.source;
      // own namespace: converted images keep the source's diff IDs, so in "default" the chain IDs already
      // exist (lazily mounted) and containerd would skip the unpack
      const ns = { namespace: 'plain' };
      const p = await ctd.ctr(['images', 'pull', '--plain-http', '--snapshotter', 'dfnode', ref], ns);
      expect(p.code, p.stderr).toBe(0);
      expect(p.stdout).toMatch(/unpacking/);
      const out = await ctd.ctrOk(
        ['run', '--rm', '--snapshotter', 'dfnode', ref, id('u'), '/bin/sh', '-c', 'echo unconverted ok'],
        ns,
      );
      expect(out).toBe('unconverted ok\n');
      // dfnode pull refuses it with a hint
      const r = await pull(ref);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/not a dfnode image.*ctr images pull --snapshotter dfnode/s);
    });

    it('clear errors: no containerd socket; snapshotter not configured', async () => {
      const r = await runCli('dfnode', [
        'pull',
        '--plain-http',
        '--address',
        join(dir, 'nope.sock'),
        images.busybox!.dfb,
      ]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toMatch(/containerd socket .*nope\.sock not found/);
      const s = await pull(images.busybox!.dfb, ['--snapshotter', 'not-configured']);
      expect(s.code).not.toBe(0);
      expect(s.stderr).toMatch(/proxy_plugins/);
      // the lease is asked for while the registry answers: a tag the registry lacks leaves none behind
      const leases = async () =>
        (await ctd.ctrOk(['leases', 'ls', '-q'])).split('\n').filter((l) => l.startsWith('dfnode-pull-'));
      const before = new Set(await leases());
      const missing = images.busybox!.dfb.replace(/:[^:/]+$/, ':no-such-tag');
      const m = await pull(missing);
      expect(m.code).not.toBe(0);
      expect(m.stderr).toMatch(/no-such-tag|manifest unknown|not found/i);
      await expect
        .poll(async () => (await leases()).filter((l) => !before.has(l)), { timeout: 5000 })
        .toEqual([]);
    });

    it('image removal and ctr snapshots rm leave no dfnode mounts', async () => {
      const ref = images.layered!.dfb;
      expect((await pull(ref)).code).toBe(0);
      expect(await runIn(ref, 'cat /data/keep.txt')).toBe('keep\n');
      const chain = (await ctd.ctrOk(['snapshots', '--snapshotter', 'dfnode', 'ls'])).split('\n').length;
      expect(chain).toBeGreaterThan(1);
      const left = await removeImages(Object.values(images).flatMap((r) => [r.dfb, r.source]));
      expect(left).toBe('');
      expect(await dfnodeMountsUnder(node.snapshotterRoot)).toEqual([]);
      expect(await dfnodeMountsUnder(node.stateDir)).toEqual([]);
    });

    // This suite runs dfnode with in-process FUSE mounts (node.fuseManager false): restarting it breaks running
    // containers. The default mode (FUSE manager) keeps them running: containerd-restart.test.ts.
    it('restart of dfnode run (in-process FUSE mounts) while a container runs: new containers start afterwards', async () => {
      const ref = images.busybox!.dfb;
      expect((await pull(ref)).code).toBe(0);
      const cid = id('bg');
      await ctd.ctrOk(['run', '-d', '--snapshotter', 'dfnode', ref, cid, '/bin/sh', '-c', 'sleep 3600']);
      try {
        await node.stop();
        node = await startDfnodeRun({ dir: join(dir, 'dfnode') });
        // The running container: can it still read its (lazily loaded) files? Reported, not asserted: in this
        // mode the FUSE mounts die with the dfnode process (see the restart section of deploy/README.md).
        const exec = await ctd.ctr([
          'tasks',
          'exec',
          '--exec-id',
          id('x'),
          cid,
          '/bin/sh',
          '-c',
          'busybox | head -1',
        ]);
        console.log(
          `[restart] running container after dfnode restart: exec exit ${exec.code}; ${(exec.stdout + exec.stderr).trim().slice(0, 200)}`,
        );
        // new containers of the same (and a re-pulled) image start, once containerd's connection to the proxy
        // snapshotter is out of gRPC backoff (it reconnects by itself within a few seconds)
        const deadline = Date.now() + 60_000;
        while (
          (await ctd.ctr(['snapshots', '--snapshotter', 'dfnode', 'ls'], { timeoutMs: 15_000 })).code !== 0 &&
          Date.now() < deadline
        )
          await new Promise((r) => setTimeout(r, 250));
        expect(await runIn(ref, 'echo after restart')).toBe('after restart\n');
      } finally {
        await ctd.ctr(['tasks', 'kill', '-s', 'SIGKILL', cid]);
        await new Promise((r) => setTimeout(r, 500));
        await ctd.ctr(['tasks', 'rm', '-f', cid]);
        await ctd.ctr(['containers', 'rm', cid]);
      }
    });
  },
);
