/**
 * Docker through dfnode's registry mirror: a private dockerd (Debian's docker.io 20.10; its own data and exec
 * roots, a private containerd, no bridge or iptables) with `registry-mirrors` in its daemon.json pointing at
 * the mirror of a `dfnode run`, whose `mirror.defaultRegistry` is a docker-registry on loopback standing in
 * for Docker Hub.
 *
 * Docker sends only Docker Hub pulls (`docker pull NAME`, i.e. docker.io/library/NAME) to its mirrors: the
 * first test pulls and runs such an image and checks that every blob byte passed the mirror; the second
 * shows what the setting does not cover: a pull that names a registry goes straight to it; the third reloads
 * dockerd onto a mirror of a registry with token auth and pulls with and without the CLI's Docker Hub
 * credentials.
 *
 * dockerd's HTTP(S) proxy is a listener of the test that drops every connection, so Docker's fallback to
 * registry-1.docker.io stays on loopback and is seen.
 *
 * Needs root, containerd, runc, dockerd and docker (docker.io), docker-registry, openssl, skopeo; skips
 * locally with a printed reason, never in CI.
 */
import { mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { MirrorServer } from '../../src/mirror/mirror-server.js';
import { Upstream } from '../../src/mirror/upstream.js';
import { freeLoopbackPort } from '../../src/util/free-port.js';
import {
  removeWorkDir,
  requireContainerd,
  startContainerd,
  startDfnodeRun,
  type DfnodeRun,
  type TestContainerd,
} from '../helpers/containerd.js';
import { requireDockerd, startDockerd, type TestDockerd } from '../helpers/dockerd.js';
import { ensureFixture } from '../helpers/fixtures.js';
import { waitFor } from '../helpers/node.js';
import { parseMetrics } from '../helpers/prom.js';
import { httpAnswer as get } from '../helpers/raw-http.js';
import { pushToRegistry, requireRegistry, startRegistry, type TestRegistry } from '../helpers/registry.js';

const dockerReq = requireDockerd();
const regReq = requireRegistry(['none', 'bearer']);
const req = dockerReq.skip ? dockerReq : regReq.skip ? regReq : requireContainerd();

/**
 * No network; no AppArmor profile: on a host with AppArmor on, dockerd loads its default profile with
 * apparmor_parser (from the apparmor package, a Recommends of docker.io that CI does not install). Not
 * checked on such a host: this one has no AppArmor.
 */
const RUN = ['run', '--rm', '--network', 'none', '--security-opt', 'apparmor=unconfined'];

const MANIFEST_TYPES =
  'application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json';

describe.skipIf(req.skip)('registry mirror with Docker (registry-mirrors, private dockerd)', () => {
  let work: string;
  let reg: TestRegistry;
  let node: DfnodeRun;
  let ctd: TestContainerd;
  let dockerd: TestDockerd;
  let mirrorAddress: string;
  let metricsAddress: string;
  // dockerd's proxy for everything beyond loopback: counts what would have gone to Docker Hub, answers nothing
  let trap: Server;
  let trapped = 0;
  let authReg: TestRegistry | undefined;
  let authMirror: MirrorServer | undefined;

  beforeAll(async () => {
    const fx = await ensureFixture('busybox');
    await mkdir('/tmp/dfnode-docker', { recursive: true });
    // short: dockerd's and containerd's sockets live below it
    work = await mkdtemp('/tmp/dfnode-docker/t-');
    reg = await startRegistry();
    // Docker Hub's official images are library/NAME; the registry stands in for Docker Hub
    for (const repo of ['library/dfbox:1', 'other/dfbox:1'])
      await pushToRegistry(fx.ref, `${reg.host}/${repo}`);
    mirrorAddress = `127.0.0.1:${await freeLoopbackPort()}`;
    metricsAddress = `127.0.0.1:${await freeLoopbackPort()}`;
    node = await startDfnodeRun({
      dir: join(work, 'n'),
      env: {
        DFNODE_MIRROR_LISTEN: mirrorAddress,
        DFNODE_MIRROR_DEFAULT_REGISTRY: reg.host,
        DFNODE_LOG_LEVEL: 'warn',
      },
      node: { metricsAddress },
    });
    trap = createServer((s) => {
      trapped++;
      s.destroy();
    });
    await new Promise<void>((r) => trap.listen(0, '127.0.0.1', () => r()));
    ctd = await startContainerd({ dir: join(work, 'c') });
    // the daemon.json of deploy/mirror/daemon.json, with this test's mirror address
    dockerd = await startDockerd({
      dir: join(work, 'd'),
      containerd: ctd.socket,
      daemonJson: { 'registry-mirrors': [`http://${mirrorAddress}`] },
      proxy: `http://127.0.0.1:${(trap.address() as AddressInfo).port}`,
    });
  }, 300_000);

  afterAll(async () => {
    await dockerd?.stop().catch(() => undefined);
    await ctd?.stop().catch(() => undefined);
    await node?.stop().catch(() => undefined);
    await reg?.stop().catch(() => undefined);
    await authMirror?.close().catch(() => undefined);
    await authReg?.stop().catch(() => undefined);
    await new Promise((r) => trap?.close(r));
    if (work) await removeWorkDir(work);
  }, 120_000);

  /** The mirror's counters on dfnode run's metrics endpoint (name{label} → value). */
  async function counters(): Promise<Record<string, number>> {
    const res = await fetch(`http://${metricsAddress}/metrics`, { signal: AbortSignal.timeout(10_000) });
    expect(res.status).toBe(200);
    const out: Record<string, number> = {};
    for (const s of parseMetrics(await res.text()))
      if (s.name.startsWith('dfnode_mirror_'))
        out[`${s.name}{${Object.values(s.labels).join(',')}}`] = s.value;
    return out;
  }
  const sum = (c: Record<string, number>, prefix: string) =>
    Object.entries(c)
      .filter(([k]) => k.startsWith(prefix))
      .reduce((a, [, v]) => a + v, 0);

  /** Config and layer bytes of a repository's manifest in the registry. */
  async function imageBytes(repo: string): Promise<number> {
    const m = await get(reg.host, `/v2/${repo}/manifests/1`, { accept: MANIFEST_TYPES });
    expect(m.status).toBe(200);
    const manifest = JSON.parse(m.body.toString()) as {
      config: { size: number };
      layers: { size: number }[];
    };
    return manifest.config.size + manifest.layers.reduce((a, l) => a + l.size, 0);
  }

  it('docker pull NAME (Docker Hub) comes through the mirror to mirror.defaultRegistry and runs; every blob byte passed the mirror', async () => {
    const before = await counters();
    await dockerd.dockerOk(['pull', 'dfbox:1']);
    const out = await dockerd.dockerOk([...RUN, 'dfbox:1', 'sh', '-c', 'echo via-docker-mirror']);
    expect(out.trim()).toBe('via-docker-mirror');
    const after = await counters();
    const delta = (k: string) => (after[k] ?? 0) - (before[k] ?? 0);
    // Docker falls back to registry-1.docker.io when a mirror fails (here: to the trap, which would fail the
    // pull): it did not try, and the counters say the mirror answered all of it.
    expect(trapped).toBe(0);
    expect(delta('dfnode_mirror_requests_total{base}')).toBeGreaterThan(0);
    expect(delta('dfnode_mirror_requests_total{manifest}')).toBeGreaterThan(0);
    expect(delta('dfnode_mirror_bytes_total{blob}')).toBeGreaterThanOrEqual(
      await imageBytes('library/dfbox'),
    );
    // the same image by its full Docker Hub name: also the mirror's (a manifest request, the blobs are here)
    const manifests = after['dfnode_mirror_requests_total{manifest}'] ?? 0;
    await dockerd.dockerOk(['pull', 'docker.io/library/dfbox:1']);
    expect((await counters())['dfnode_mirror_requests_total{manifest}']).toBeGreaterThan(manifests);
    expect(trapped).toBe(0);
    // the mirror took them from the registry it stands in for
    await waitFor('the registry to log the blob GETs', async () =>
      reg.requests().some((r) => r.method === 'GET' && r.path.startsWith('/v2/library/dfbox/blobs/')),
    );
  }, 300_000);

  it('does not cover a pull that names a registry: docker pull REGISTRY/REPO goes straight to it, the mirror sees none of it', async () => {
    // the layers are shared with dfbox: remove that image so that this pull downloads them again
    await dockerd.dockerOk(['rmi', 'dfbox:1']);
    const before = await counters();
    const ref = `${reg.host}/other/dfbox:1`;
    // 127.0.0.0/8 is an insecure registry for Docker by default: plain HTTP after the HTTPS attempt
    await dockerd.dockerOk(['pull', ref]);
    const out = await dockerd.dockerOk([...RUN, ref, 'echo', 'direct']);
    expect(out.trim()).toBe('direct');
    await waitFor('the registry to log the direct pull', async () => {
      const blobs = reg
        .requests()
        .filter((r) => r.method === 'GET' && r.status === 200 && r.path.startsWith('/v2/other/dfbox/blobs/'));
      return blobs.length > 0;
    });
    const after = await counters();
    expect(sum(after, 'dfnode_mirror_requests_total')).toBe(sum(before, 'dfnode_mirror_requests_total'));
    expect(sum(after, 'dfnode_mirror_bytes_total')).toBe(sum(before, 'dfnode_mirror_bytes_total'));
    expect(trapped).toBe(0);
  }, 300_000);

  it('passes Docker Hub credentials through: a pull without them is refused, with them it runs, and nothing pulled with them is served without', async () => {
    const fx = await ensureFixture('busybox');
    authReg = await startRegistry({ auth: 'bearer', username: 'alice', password: 'secret' });
    await pushToRegistry(fx.ref, `${authReg.host}/library/dfprivate:1`, 'alice:secret');
    // a mirror standing in for a Docker Hub that needs credentials; dockerd reloads registry-mirrors on SIGHUP
    authMirror = new MirrorServer({
      listen: '127.0.0.1:0',
      upstream: new Upstream({ plainHttp: true }),
      defaultRegistry: authReg.host,
      logger: silentLogger,
    });
    await authMirror.start();
    await dockerd.reload({ 'registry-mirrors': [`http://${authMirror.address}`] });
    // the CLI sends the credentials it holds for Docker Hub with the pull
    const creds = join(work, 'hub-creds');
    await mkdir(creds, { recursive: true });
    const auth = Buffer.from('alice:secret').toString('base64');
    await writeFile(
      join(creds, 'config.json'),
      JSON.stringify({ auths: { 'https://index.docker.io/v1/': { auth } } }),
    );

    // the same layers as the images before: none may be here, so that this pull fetches every blob
    const ids = (await dockerd.dockerOk(['images', '-q'])).split('\n').filter(Boolean);
    if (ids.length) await dockerd.dockerOk(['rmi', '-f', ...new Set(ids)]);
    const trappedAnon = trapped;
    const anon = await dockerd.docker(['pull', 'dfprivate:1']);
    expect(anon.code).not.toBe(0);
    // refused through the mirror (the registry's token server said no), Docker went on to Docker Hub itself
    expect(trapped).toBeGreaterThan(trappedAnon);
    const tokens = authReg.tokenRequests;
    expect(tokens).toBeGreaterThan(0);
    const blobBytes = () => authMirror!.counters.bytes.blob ?? 0;
    expect(blobBytes()).toBe(0);

    const trappedBefore = trapped;
    await dockerd.dockerOk(['pull', 'dfprivate:1'], { clientConfig: creds });
    expect(trapped).toBe(trappedBefore);
    expect(authReg.tokenRequests).toBeGreaterThan(tokens);
    expect(blobBytes()).toBeGreaterThanOrEqual(await imageBytes('library/dfbox'));
    const out = await dockerd.dockerOk([...RUN, 'dfprivate:1', 'echo', 'private']);
    expect(out.trim()).toBe('private');

    // the mirror holds the manifest (under alice's token) now: a pull without credentials still gets nothing
    await dockerd.dockerOk(['rmi', 'dfprivate:1']);
    const sent = blobBytes();
    const again = await dockerd.docker(['pull', 'dfprivate:1']);
    expect(again.code).not.toBe(0);
    expect(blobBytes()).toBe(sent);
  }, 300_000);
});
