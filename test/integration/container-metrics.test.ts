/**
 * Per-container blocked time through the real path: a private containerd (ctr, runc) with `dfnode run` (fuse
 * manager) as its snapshotter, a container of a converted debian image that reads files nobody has fetched
 * yet. The fuse manager's metrics show the container's blocked time labelled with its id and image, `dfnode
 * status` lists it with the top blocked files, the snapshotter's layers count in dfnode_mounts and
 * dfnode_cache_fill_ratio, and the container's series go away once the container is deleted. A container made
 * the way the CRI plugin makes them (k8s.io, a kubepods cgroup, the io.kubernetes.* labels) is labelled with
 * its pod.
 *
 * Needs root, /dev/fuse, overlayfs, containerd, ctr, runc, docker-registry, skopeo, umoci, debootstrap and
 * busybox-static (fixtures); skips locally with a printed reason when they are missing (CI must not skip).
 */
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';
import {
  pushAndConvertLayout,
  removeWorkDir,
  requireContainerd,
  startContainerd,
  startDfnodeRun,
  type DfnodeRun,
  type TestContainerd,
} from '../helpers/containerd.js';
import { ensureFixture } from '../helpers/fixtures.js';
import { parseMetrics } from '../helpers/prom.js';
import { freePort, startRegistry, type TestRegistry } from '../helpers/registry.js';

const req = requireContainerd(['debootstrap', 'busybox']);

/** `rel` below every cgroup hierarchy of this host (the unified one, or each v1 controller). */
function cgroupDirs(rel: string): string[] {
  const root = '/sys/fs/cgroup';
  if (existsSync(join(root, 'cgroup.controllers'))) return [join(root, rel)];
  return readdirSync(root, { withFileTypes: true })
    .filter((e) => e.isDirectory())
    .map((e) => join(root, e.name, rel));
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 90_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

describe.skipIf(req.skip)('per-container blocked time (real containerd, runc, FUSE, registry)', () => {
  let dir: string;
  let reg: TestRegistry;
  let node: DfnodeRun;
  let ctd: TestContainerd;
  let ref: string;
  /** A second image: the first test's reads start the background fill of the debian layers. */
  let bbRef: string;
  let metricsUrl: string;
  let manager: number | undefined;

  beforeAll(async () => {
    await mkdir('/tmp/dfnode-ctd', { recursive: true });
    dir = await mkdtemp('/tmp/dfnode-ctd/m-');
    reg = await startRegistry();
    ref = (await pushAndConvertLayout(reg.host, await ensureFixture('debian'), 'debian', dir)).dfb;
    bbRef = (await pushAndConvertLayout(reg.host, await ensureFixture('busybox'), 'busybox', dir)).dfb;
    const port = await freePort();
    metricsUrl = `http://127.0.0.1:${port}/metrics`;
    node = await startDfnodeRun({
      dir: join(dir, 'dfnode'),
      fuseManager: true,
      // no background fill: a layer that a host process touched first (containerd reads /etc/passwd from the
      // rootfs) would otherwise fill, under load before the container's own first read, which then never waits
      env: { ...process.env, DFNODE_FETCH_BACKGROUND_FILL: 'false' },
      // the socket startContainerd below serves (a lookup before it exists just fails)
      node: { metricsAddress: `127.0.0.1:${port}`, containerdAddress: join(dir, 'ctd', 'containerd.sock') },
    });
    const pidFile = join(dir, 'dfnode', 'state', 'fuse-manager.pid');
    manager = existsSync(pidFile) ? Number.parseInt(readFileSync(pidFile, 'utf8'), 10) : undefined;
    ctd = await startContainerd({ dir: join(dir, 'ctd'), snapshotterSocket: node.socket });
    const p = await runCli('dfnode', ['pull', '--plain-http', '--address', ctd.socket, ref]);
    if (p.code !== 0) throw new Error(`dfnode pull failed: ${p.stderr}`);
  });

  afterAll(async () => {
    await ctd?.stop().catch(() => undefined);
    await node?.stop().catch(() => undefined);
    if (manager && alive(manager)) {
      process.kill(manager, 'SIGTERM');
      const deadline = Date.now() + 30_000;
      while (alive(manager) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      if (alive(manager)) process.kill(manager, 'SIGKILL');
    }
    await reg?.stop().catch(() => undefined);
    if (dir) await removeWorkDir(dir);
  });

  const scrape = async () => parseMetrics(await (await fetch(metricsUrl)).text());

  it('a container reading uncached files shows its blocked time, in metrics and status, until it is deleted', async () => {
    expect(manager, `no fuse manager pid file; dfnode run said:\n${node.stderr()}`).toBeGreaterThan(0);
    const cid = 'reader-1';
    // the shell, find and cat are read from the lazily mounted layers: every first read waits on the registry
    await ctd.ctrOk([
      'run',
      '-d',
      '--snapshotter',
      'dfnode',
      ref,
      cid,
      '/bin/sh',
      '-c',
      'find /usr/bin /usr/lib -type f | head -200 | xargs cat > /dev/null; touch /done; sleep 600',
    ]);
    const series = await until('the container series', async () => {
      const s = (await scrape()).find(
        (x) => x.name === 'dfnode_container_read_blocked_seconds_total' && x.labels.container === cid,
      );
      return s && s.value > 0 ? s : undefined;
    });
    expect(series.labels).toMatchObject({ container: cid, image: ref, namespace: 'default', pod: '' });
    const all = await scrape();
    const reads = all.find(
      (x) => x.name === 'dfnode_container_blocked_reads_total' && x.labels.container === cid,
    );
    expect(reads?.value).toBeGreaterThan(0);
    // the container's blocked time is part of the node's total
    const total = all.find((x) => x.name === 'dfnode_read_blocked_seconds_total')!.value;
    expect(total).toBeGreaterThanOrEqual(series.value);
    // the snapshotter's layers are mounted by the fuse manager: they count as mounts and have a fill ratio
    expect(all.find((x) => x.name === 'dfnode_mounts')!.value).toBeGreaterThanOrEqual(1);
    expect(all.filter((x) => x.name === 'dfnode_cache_fill_ratio').length).toBeGreaterThanOrEqual(1);

    const st = await runCli('dfnode', ['status', '-c', node.configPath, '--json']);
    expect(st.code, st.stderr).toBe(0);
    const stats = JSON.parse(st.stdout).manager.stats;
    expect(stats.topBlockedContainers.map((c: { container: string }) => c.container)).toContain(cid);
    expect(stats.topBlockedFiles.length).toBeGreaterThan(0);
    for (const f of stats.topBlockedFiles) {
      expect(f.path).toMatch(/^\//);
      expect(f.layer).toMatch(/^sha256:/);
      expect(f.blockedMs).toBeGreaterThanOrEqual(0); // 1 ms resolution: a fast read may add 0
      expect(f.reads).toBeGreaterThan(0);
    }
    const text = await runCli('dfnode', ['status', '-c', node.configPath]);
    expect(text.stdout).toMatch(/top blocked files/);
    expect(text.stdout).toContain(cid);

    // the container ends and is deleted: its series go away (the meter checks every 10 s)
    await ctd.ctrOk(['tasks', 'kill', '-s', 'SIGKILL', cid]);
    await until('the task to stop', async () => {
      const r = await ctd.ctr(['tasks', 'rm', cid]);
      return r.code === 0 ? true : undefined;
    });
    await ctd.ctrOk(['containers', 'rm', cid]);
    await until('the series to be dropped', async () =>
      (await scrape()).some((x) => x.name.startsWith('dfnode_container_') && x.labels.container === cid)
        ? undefined
        : true,
    );
  });

  it('a Kubernetes-style container (k8s.io, kubepods cgroup, CRI labels) is labelled with its pod', async () => {
    // what the CRI plugin makes with the cgroupfs driver, made with ctr: a 64-hex id in k8s.io, a
    // /kubepods/…/pod…/<id> cgroup and the io.kubernetes.* labels
    const cid = randomBytes(32).toString('hex');
    const podDir = `pod-dfnode-test-${randomBytes(4).toString('hex')}`;
    const hadKubepods = cgroupDirs('kubepods').filter((d) => existsSync(d));
    const p = await runCli('dfnode', [
      'pull',
      '--plain-http',
      '--address',
      ctd.socket,
      '-n',
      'k8s.io',
      bbRef,
    ]);
    expect(p.code, p.stderr).toBe(0);
    try {
      await ctd.ctrOk(
        [
          'run',
          '-d',
          '--snapshotter',
          'dfnode',
          '--cgroup',
          `/kubepods/${podDir}/${cid}`,
          '--label',
          'io.kubernetes.pod.name=web-0',
          '--label',
          'io.kubernetes.pod.namespace=shop',
          '--label',
          'io.kubernetes.container.name=web',
          bbRef,
          cid,
          '/bin/sh',
          '-c',
          'cat /bin/busybox > /dev/null; sleep 600',
        ],
        { namespace: 'k8s.io' },
      );
      const series = await until('the pod series', async () =>
        (await scrape()).find(
          (x) => x.name === 'dfnode_container_read_blocked_seconds_total' && x.labels.container === cid,
        ),
      );
      expect(series.labels).toMatchObject({
        container: cid,
        image: bbRef,
        namespace: 'shop',
        pod: 'web-0',
        container_name: 'web',
      });
      await ctd.ctrOk(['tasks', 'kill', '-s', 'SIGKILL', cid], { namespace: 'k8s.io' });
      await until('the task to stop', async () =>
        (await ctd.ctr(['tasks', 'rm', cid], { namespace: 'k8s.io' })).code === 0 ? true : undefined,
      );
      await ctd.ctrOk(['containers', 'rm', cid], { namespace: 'k8s.io' });
      await until('the pod series to be dropped', async () =>
        (await scrape()).some((x) => x.labels.container === cid) ? undefined : true,
      );
    } finally {
      // the container, if a failed expectation left it (its cgroup must be empty before it can go)
      const k8s = { namespace: 'k8s.io', timeoutMs: 30_000 };
      await ctd.ctr(['tasks', 'kill', '-s', 'SIGKILL', cid], k8s);
      for (let i = 0; i < 50 && (await ctd.ctr(['tasks', 'rm', cid], k8s)).stderr.includes('running'); i++)
        await new Promise((r) => setTimeout(r, 100));
      await ctd.ctr(['containers', 'rm', cid], k8s);
      // runc leaves the parents of the container's cgroup: remove what this test made (empty cgroups only)
      for (const d of cgroupDirs(`kubepods/${podDir}`)) await rmdir(d).catch(() => undefined);
      for (const d of cgroupDirs('kubepods'))
        if (!hadKubepods.includes(d)) await rmdir(d).catch(() => undefined);
    }
  });
});
