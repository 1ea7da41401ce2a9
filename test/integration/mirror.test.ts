/**
 * The registry mirror with real engines: containerd (ctr --hosts-dir, hosts.toml) and podman
 * (registries.conf), a real docker-registry with and without token auth, and a lying upstream.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { writeContainerdHosts } from '../../src/mirror/containerd-hosts.js';
import { MirrorServer } from '../../src/mirror/mirror-server.js';
import { startMirror } from '../../src/mirror/start-mirror.js';
import { Upstream } from '../../src/mirror/upstream.js';
import { silentLogger } from '../../src/log.js';
import { run, runCli, runOk } from '../helpers/cli.js';
import {
  removeWorkDir,
  requireContainerd,
  startContainerd,
  type TestContainerd,
} from '../helpers/containerd.js';
import { ensureFixture } from '../helpers/fixtures.js';
import { pushToRegistry, requireRegistry, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { httpAnswer as get } from '../helpers/raw-http.js';

const req = requireContainerd(['podman']);
const regReq = requireRegistry(['none', 'bearer']);

describe.skipIf(req.skip || regReq.skip)('registry mirror (containerd, podman, docker-registry)', () => {
  let work: string;
  let reg: TestRegistry;
  let authReg: TestRegistry;
  let ctd: TestContainerd;
  let mirror: MirrorServer;
  let hosts: string;
  const cleanups: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'dfm-'));
    const fx = await ensureFixture('busybox');
    reg = await startRegistry();
    // anonymous pulls may read public/* (Docker Hub's public images), nothing else
    authReg = await startRegistry({
      auth: 'bearer',
      username: 'alice',
      password: 'secret',
      anonymousPull: ['public/busybox'],
    });
    await pushToRegistry(fx.ref, `${reg.host}/tools/busybox:1`);
    for (const repo of ['private/busybox', 'public/busybox'])
      await pushToRegistry(fx.ref, `${authReg.host}/${repo}:1`, 'alice:secret');
    mirror = new MirrorServer({
      listen: '127.0.0.1:0',
      upstream: new Upstream({ plainHttp: true }),
      defaultRegistry: reg.host,
      // every manifest request goes to the registry, so that answers while it is down are the stale path
      manifestTtlMs: 0,
      logger: silentLogger,
    });
    await mirror.start();
    ctd = await startContainerd({ dir: join(work, 'ctd') });
  }, 300_000);

  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await ctd?.stop();
    await mirror?.close();
    await reg?.stop();
    await authReg?.stop();
    if (work) await removeWorkDir(work);
  }, 120_000);

  it('containerd pulls through hosts.toml (dfnode mirror-setup) and runs the image; every blob passed the mirror', async () => {
    // _default/hosts.toml: every registry without a hosts.toml of its own goes through the mirror
    hosts = join(work, 'certs.d');
    const setup = await runCli('dfnode', [
      'mirror-setup',
      '--containerd-dir',
      hosts,
      '--mirror',
      mirror.address,
    ]);
    expect(setup.code, setup.stderr).toBe(0);
    expect(setup.stdout).toMatch(/_default: written/);
    const before = reg.requestCount();
    await ctd.ctrOk(['images', 'pull', '--hosts-dir', hosts, `${reg.host}/tools/busybox:1`]);
    expect(mirror.counters.requests.manifest).toBeGreaterThan(0);
    expect(mirror.counters.requests.blob).toBeGreaterThan(0);
    // the registry saw the pull (through the mirror, which is the only host in hosts.toml besides it)
    expect(reg.requestCount()).toBeGreaterThan(before);
    const manifests = reg.requests().filter((r) => r.path.includes('/manifests/'));
    expect(manifests.length).toBeGreaterThan(0);
    const out = await ctd.ctrOk([
      'run',
      '--rm',
      `${reg.host}/tools/busybox:1`,
      'mirror-t1',
      '/bin/sh',
      '-c',
      'echo via-mirror',
    ]);
    expect(out.trim()).toBe('via-mirror');
    // Every blob of the image came through the mirror (hosts.toml lists the registry as the fallback
    // server too, so a mirror that failed would go unnoticed without this): its blob bytes cover the config
    // and all layers, as the registry's manifest lists them.
    const m = await get(reg.host, '/v2/tools/busybox/manifests/1', {
      accept:
        'application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json',
    });
    const manifest = JSON.parse(m.body.toString()) as {
      config: { size: number };
      layers: { size: number }[];
    };
    const total = manifest.config.size + manifest.layers.reduce((a, l) => a + l.size, 0);
    expect(mirror.counters.bytes.blob ?? 0).toBeGreaterThanOrEqual(total);
  }, 300_000);

  it('passes token auth through: 401 without credentials, a pull with them; nothing leaks to a request without', async () => {
    const ref = `${authReg.host}/private/busybox:1`;
    const anon = await ctd.ctr(['images', 'pull', '--hosts-dir', hosts, ref]);
    expect(anon.code).not.toBe(0);
    expect(anon.stderr + anon.stdout).toMatch(/401|unauthorized|authorization/i);
    await ctd.ctrOk(['images', 'pull', '--hosts-dir', hosts, '--user', 'alice:secret', ref]);
    // The manifest is in the mirror's memory now, under alice's token: a request without it gets the challenge.
    const m = await get(mirror.address, `/v2/private/busybox/manifests/1?ns=${authReg.host}`, {
      accept:
        'application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json',
    });
    expect(m.status).toBe(401);
    expect(String(m.headers['www-authenticate'])).toMatch(/^Bearer realm=/);
    const wrong = await get(mirror.address, `/v2/private/busybox/manifests/1?ns=${authReg.host}`, {
      authorization: 'Bearer not-a-token',
    });
    expect(wrong.status).toBe(401);
  }, 300_000);

  it('containerd pulls a public image from a token-auth registry without a challenge: the mirror fetches the anonymous token', async () => {
    const ref = `${authReg.host}/public/busybox:1`;
    const anon = mirror.upstream.anonymous!;
    const tokensBefore = authReg.tokenRequests;
    const fetchedBefore = anon.counters.fetched;
    await ctd.ctrOk(['images', 'pull', '--hosts-dir', hosts, ref]);
    const out = await ctd.ctrOk(['run', '--rm', ref, 'mirror-anon', '/bin/sh', '-c', 'echo public']);
    expect(out.trim()).toBe('public');
    // every token request the token server saw was the mirror's: containerd was never challenged
    expect(anon.counters.fetched).toBeGreaterThan(fetchedBefore);
    expect(authReg.tokenRequests - tokensBefore).toBe(anon.counters.fetched - fetchedBefore);
  }, 300_000);

  it('podman pulls through a registries.conf mirror', async () => {
    const dir = join(work, 'podman');
    await mkdir(dir, { recursive: true });
    const conf = join(dir, 'registries.conf');
    await writeFile(
      conf,
      `[[registry]]\nlocation = "${reg.host}"\ninsecure = true\n\n[[registry.mirror]]\nlocation = "${mirror.address}"\ninsecure = true\n`,
    );
    const blobsBefore = mirror.counters.requests.blob ?? 0;
    // podman with its own storage below the test directory (vfs: no overlay mounts to clean up)
    const podman = (args: string[]) =>
      run(
        'podman',
        ['--root', join(dir, 'root'), '--runroot', join(dir, 'run'), '--storage-driver', 'vfs', ...args],
        { env: { ...process.env, CONTAINERS_REGISTRIES_CONF: conf }, timeoutMs: 180_000 },
      );
    cleanups.push(() => podman(['system', 'reset', '-f']));
    const r = await podman(['pull', '-q', `${reg.host}/tools/busybox:1`]);
    expect(r.code, r.stderr).toBe(0);
    expect(mirror.counters.requests.blob ?? 0).toBeGreaterThan(blobsBefore);
  }, 300_000);

  it('a restarted mirror answers the manifests it fetched from disk while the registry is down: containerd pulls again', async () => {
    const own = await startRegistry();
    cleanups.push(() => own.stop());
    const fx = await ensureFixture('busybox');
    const ref = `${own.host}/tools/restart:1`;
    await runOk('skopeo', ['copy', '--quiet', '--dest-tls-verify=false', fx.ref, `docker://${ref}`]);
    // as a node or seed starts it: manifests on disk in the cache dir
    const cfg = loadConfig({
      env: {},
      flags: {
        cache: { dir: join(work, 'restart-cache') },
        registry: { insecure: [own.host] },
        mirror: { listen: '127.0.0.1:0' },
      },
    });
    const hostsFor = async (m: MirrorServer, name: string) => {
      const dir = join(work, name);
      await writeContainerdHosts(dir, m.address, { registry: own.host });
      return dir;
    };
    const first = (await startMirror(cfg, silentLogger))!;
    try {
      await ctd.ctrOk(['images', 'pull', '--hosts-dir', await hostsFor(first, 'hosts-1'), ref]);
      expect(first.counters.requests.manifest).toBeGreaterThan(0);
    } finally {
      await first.close();
    }
    expect((await readdir(join(work, 'restart-cache', 'mirror-manifests'))).length).toBeGreaterThan(0);
    await own.stop();
    // a new mirror process on the same cache dir, the registry gone: containerd resolves the tag again (its
    // content store holds the blobs); hosts.toml falls back to the registry itself, which is down, so the
    // pull succeeds only through the stored manifests
    const second = (await startMirror(cfg, silentLogger))!;
    try {
      const hosts = await hostsFor(second, 'hosts-2');
      await ctd.ctrOk(['images', 'pull', '--hosts-dir', hosts, ref]);
      expect(second.counters.staleManifests).toBeGreaterThan(0);
      // without the stored manifests (another cache dir) the same pull fails
      const empty = (await startMirror(
        loadConfig({ env: {}, flags: { ...cfg, cache: { dir: join(work, 'restart-empty') } } }),
        silentLogger,
      ))!;
      try {
        const r = await ctd.ctr(['images', 'pull', '--hosts-dir', await hostsFor(empty, 'hosts-3'), ref]);
        expect(r.code).not.toBe(0);
        expect(empty.counters.staleManifests).toBe(0);
      } finally {
        await empty.close();
      }
      const out = await ctd.ctrOk([
        'run',
        '--rm',
        ref,
        'mirror-restart',
        '/bin/sh',
        '-c',
        'echo after-restart',
      ]);
      expect(out.trim()).toBe('after-restart');
    } finally {
      await second.close();
    }
  }, 300_000);

  it('answers cached manifests while the registry is down, and refuses what is not a pull', async () => {
    const path = `/v2/tools/busybox/manifests/1?ns=${reg.host}`;
    const accept = { accept: 'application/vnd.oci.image.manifest.v1+json' };
    const first = await get(mirror.address, path, accept);
    expect(first.status).toBe(200);
    expect((await get(mirror.address, '/v2/tools/busybox/tags/list')).status).toBe(404);
    expect((await get(mirror.address, path, {}, 'DELETE')).status).toBe(405);
    expect((await get(mirror.address, '/v2/Tools/x/manifests/1')).status).toBe(400);
    await reg.stop();
    const stale = await get(mirror.address, path, accept);
    expect(stale.status).toBe(200);
    expect(stale.headers['docker-content-digest']).toBe(first.headers['docker-content-digest']);
    expect(stale.body.equals(first.body)).toBe(true);
    expect(mirror.counters.staleManifests).toBeGreaterThan(0);
    const digest = String(first.headers['docker-content-digest']);
    const blob = await get(mirror.address, `/v2/tools/busybox/blobs/${digest}?ns=${reg.host}`);
    expect(blob.status).toBe(502);
    expect(blob.body.toString()).toMatch(/unreachable/);
  }, 120_000);
});

describe('registry mirror against a lying upstream', () => {
  let upstream: Server;
  let mirror: MirrorServer;
  const good = Buffer.alloc(300_000, 7);
  const goodDigest = `sha256:${createHash('sha256').update(good).digest('hex')}`;

  beforeAll(async () => {
    upstream = createServer((q, s) => {
      if (q.url?.includes('/blobs/')) {
        const bad = Buffer.from(good);
        bad[bad.length - 1] = 6;
        s.writeHead(200, { 'content-length': bad.length });
        s.end(bad);
      } else if (q.url?.includes('/manifests/huge')) {
        s.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
        s.end(Buffer.alloc(5 << 20, 0x20));
      } else if (q.url?.includes('/manifests/')) {
        s.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
        s.end('{"schemaVersion":2}');
      } else {
        s.writeHead(404);
        s.end();
      }
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
    const host = `127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    mirror = new MirrorServer({
      listen: '127.0.0.1:0',
      upstream: new Upstream({ plainHttp: true }),
      defaultRegistry: host,
      logger: silentLogger,
    });
    await mirror.start();
  });

  afterAll(async () => {
    await mirror?.close();
    await new Promise<void>((r) => upstream?.close(() => r()));
  });

  it('cuts a blob whose bytes do not match its digest before its end, and refuses oversized or mislabelled manifests', async () => {
    const r = await get(mirror.address, `/v2/x/y/blobs/${goodDigest}`);
    expect(r.status).toBe(200);
    expect(r.complete).toBe(false);
    expect(mirror.counters.digestMismatches).toBe(1);
    expect((await get(mirror.address, '/v2/x/y/manifests/huge')).status).toBe(502);
    // asked by digest, answered with other content
    const m = await get(mirror.address, `/v2/x/y/manifests/${goodDigest}`);
    expect(m.status).toBe(502);
    expect(m.body.toString()).toMatch(/answered manifest .* with content of digest/);
    expect(mirror.counters.digestMismatches).toBe(2);
  });

  it('will not listen beyond loopback without a list of registries', async () => {
    const cfg = loadConfig({ env: {}, file: undefined });
    cfg.mirror.listen = '0.0.0.0:0';
    await expect(startMirror(cfg, silentLogger)).rejects.toThrow(/mirror.registries/);
    cfg.mirror.listen = '';
    expect(await startMirror(cfg, silentLogger)).toBeUndefined();
  });
});
