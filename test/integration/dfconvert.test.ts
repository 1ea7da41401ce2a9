/**
 * dfconvert end to end: real docker-registry, images built from scratch, skopeo to push and inspect,
 * the compiled CLI as users run it.
 */
import { mkdir, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  digestOf,
  MT,
  tagged,
  writeBlob,
  writeIndex,
  writeJsonBlob,
  type Descriptor,
} from '../fixtures/oci-layout.js';
import { buildTar, gzip, type TarEntry } from '../fixtures/tar-builder.js';
import { expectCleanFailure, expectOk, runCli, runOk } from '../helpers/cli.js';
import {
  corruptGzipLayer,
  ensureDockerArchive,
  ensureFixture,
  truncatedTarLayer,
  unknownMediaTypeLayer,
  wrongDiffIdLayer,
  wrongDigestLayer,
  type Fixture,
} from '../helpers/fixtures.js';
import { pushToRegistry, requireRegistry, startRegistry, type TestRegistry } from '../helpers/registry.js';
import { requireTools } from '../helpers/require.js';
import { sha256Digest } from '../helpers/digest.js';

const DFB = 'application/vnd.oci.image.layer.dfnode.dfb.v1';
const req = requireTools(['skopeo', 'umoci', 'busybox', 'debootstrap']);
const regReq = requireRegistry(['none']);

interface Summary {
  digest: string;
  layers: Array<{ source: string; digest: string; reused: boolean; push: string }>;
  bytesIn: number;
  bytesOut: number;
  seconds: number;
}

async function readJson(dir: string, digest: string): Promise<any> {
  return JSON.parse(await readFile(join(dir, 'blobs', 'sha256', digest.slice(7)), 'utf8'));
}

async function ociManifest(dir: string, tag: string): Promise<{ digest: string; manifest: any }> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8'));
  const d = index.manifests.find((m: any) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!d) throw new Error(`no tag ${tag} in ${dir}`);
  return { digest: d.digest, manifest: await readJson(dir, d.digest) };
}

/** Writes a one-image OCI layout from layer tars. */
async function makeImage(dir: string, tag: string, layers: TarEntry[][]): Promise<void> {
  const tars = layers.map((l) => buildTar(l));
  const descs: Descriptor[] = [];
  for (const t of tars) descs.push(await writeBlob(dir, MT.ociLayerGzip, gzip(t)));
  const config = await writeJsonBlob(dir, MT.ociConfig, {
    architecture: 'amd64',
    os: 'linux',
    rootfs: { type: 'layers', diff_ids: tars.map((t) => digestOf(t)) },
  });
  const manifest = await writeJsonBlob(dir, MT.ociManifest, {
    schemaVersion: 2,
    mediaType: MT.ociManifest,
    config,
    layers: descs,
  });
  await writeIndex(dir, [tagged(manifest, tag)]);
}

describe.skipIf(req.skip || regReq.skip)('dfconvert (real registry, images built from scratch)', () => {
  let reg: TestRegistry;
  let work: string;
  const fx: Record<string, Fixture> = {};
  const convertArgs = () => ['--plain-http', '--work-dir', join(work, 'dfwork'), '--quiet'];

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'dfconvert-it-'));
    for (const name of ['busybox', 'multilayer', 'edge', 'debian'] as const)
      fx[name] = await ensureFixture(name);
    reg = await startRegistry();
    for (const name of ['busybox', 'multilayer', 'debian'] as const)
      await pushToRegistry(fx[name]!.ref, `${reg.host}/${name}:1`);
  });

  afterAll(async () => {
    await reg?.stop();
    if (work) await rm(work, { recursive: true, force: true });
  });

  for (const name of ['busybox', 'multilayer', 'debian']) {
    it(`converts ${name} registry → registry; skopeo sees DFB layers; verify passes`, async () => {
      const r = await runCli('dfconvert', [...convertArgs(), '--json', `${reg.host}/${name}:1`]);
      expectOk(r, 'dfconvert');
      const summary = JSON.parse(r.stdout) as Summary;
      expect(summary.layers.length).toBeGreaterThan(0);
      const raw = JSON.parse(
        await runOk('skopeo', [
          'inspect',
          '--raw',
          '--tls-verify=false',
          `docker://${reg.host}/${name}:1-dfb`,
        ]),
      );
      expect(raw.layers.every((l: any) => l.mediaType === DFB)).toBe(true);
      expect(
        raw.layers.every((l: any) => l.annotations['dev.dfnode.source.digest'].startsWith('sha256:')),
      ).toBe(true);
      const src = JSON.parse(
        await runOk('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${reg.host}/${name}:1`]),
      );
      expect(raw.config.digest).toBe(src.config.digest);
      expect(raw.layers.map((l: any) => l.annotations['dev.dfnode.source.digest'])).toEqual(
        src.layers.map((l: any) => l.digest),
      );
      const v = await runCli('dfconvert', [
        'verify',
        '--plain-http',
        `${reg.host}/${name}:1`,
        `${reg.host}/${name}:1-dfb`,
      ]);
      expectOk(v, 'verify');
      expect(v.stdout).toMatch(/^OK/);
    });
  }

  it('converts oci → oci (edge cases: PAX, GNU long names, xattrs, devices, whiteouts), deterministically', async () => {
    const out1 = join(work, 'edge-1');
    const out2 = join(work, 'edge-2');
    const a = await runCli('dfconvert', [
      ...convertArgs(),
      '--force',
      '--workers',
      '1',
      fx.edge!.ref,
      `oci:${out1}:dfb`,
    ]);
    expectOk(a, 'convert edge 1');
    const b = await runCli('dfconvert', [
      ...convertArgs(),
      '--force',
      '--workers',
      '4',
      fx.edge!.ref,
      `oci:${out2}:dfb`,
    ]);
    expectOk(b, 'convert edge 2');
    const m1 = await ociManifest(out1, 'dfb');
    const m2 = await ociManifest(out2, 'dfb');
    expect(m1.digest).toBe(m2.digest);
    for (const l of m1.manifest.layers) {
      const x = await readFile(join(out1, 'blobs', 'sha256', l.digest.slice(7)));
      const y = await readFile(join(out2, 'blobs', 'sha256', l.digest.slice(7)));
      expect(x.equals(y)).toBe(true);
    }
    expectOk(await runCli('dfconvert', ['verify', fx.edge!.ref, `oci:${out1}:dfb`]), 'verify edge');
  });

  it('converts the docker media type variant and a docker archive', async () => {
    const archive = await ensureDockerArchive('busybox');
    const out = join(work, 'from-archive');
    expectOk(
      await runCli('dfconvert', [...convertArgs(), `docker-archive:${archive}`, `oci:${out}:dfb`]),
      'archive',
    );
    expectOk(
      await runCli('dfconvert', ['verify', `docker-archive:${archive}`, `oci:${out}:dfb`]),
      'verify archive',
    );
    const edgeArchive = await ensureDockerArchive('edge');
    const out2 = join(work, 'from-edge-archive');
    expectOk(
      await runCli('dfconvert', [...convertArgs(), `docker-archive:${edgeArchive}`, `oci:${out2}:dfb`]),
      'edge archive',
    );
    expectOk(
      await runCli('dfconvert', ['verify', `docker-archive:${edgeArchive}`, `oci:${out2}:dfb`]),
      'verify',
    );
  });

  it('converts a zstd image (skopeo --dest-compress-format zstd) to the same DFB layers as its gzip original', async () => {
    const zdir = join(work, 'zstd-src');
    await runOk('skopeo', [
      ...['copy', '--quiet', '--dest-compress-format', 'zstd'],
      ...[fx.multilayer!.ref, `oci:${zdir}:z`],
    ]);
    const src = await ociManifest(zdir, 'z');
    expect(src.manifest.layers.every((l: any) => l.mediaType.endsWith('tar+zstd'))).toBe(true);
    const zout = join(work, 'zstd-out');
    const gout = join(work, 'zstd-gzip-out');
    expectOk(await runCli('dfconvert', [...convertArgs(), `oci:${zdir}:z`, `oci:${zout}:dfb`]), 'zstd');
    expectOk(await runCli('dfconvert', [...convertArgs(), fx.multilayer!.ref, `oci:${gout}:dfb`]), 'gzip');
    const layers = async (d: string) =>
      (await ociManifest(d, 'dfb')).manifest.layers.map((l: any) => l.digest);
    expect(await layers(zout)).toEqual(await layers(gout));
    const v = await runCli('dfconvert', ['verify', `oci:${zdir}:z`, `oci:${zout}:dfb`]);
    expectOk(v, 'verify zstd');
    expect(v.stdout).toMatch(/^OK/);
  });

  it('is incremental: a second run reuses every layer and uploads nothing', async () => {
    const args = [...convertArgs(), '--json', `${reg.host}/multilayer:1`, `${reg.host}/multilayer:again`];
    const first = await runCli('dfconvert', args);
    expectOk(first, 'first');
    // A fresh work dir: reuse must come from the destination registry, as on a new CI machine.
    const second = await runCli('dfconvert', [
      '--plain-http',
      '--quiet',
      '--json',
      '--work-dir',
      join(work, 'fresh'),
      `${reg.host}/multilayer:1`,
      `${reg.host}/multilayer:again`,
    ]);
    expectOk(second, 'second');
    const s1 = JSON.parse(first.stdout) as Summary;
    const s2 = JSON.parse(second.stdout) as Summary;
    expect(s2.digest).toBe(s1.digest);
    expect(s2.layers.every((l) => l.reused)).toBe(true);
    expect(s2.bytesOut).toBe(0);
    expect(s2.bytesIn).toBe(0);
  });

  it('verify catches a flipped byte in any block, a missing file and a changed mode', async () => {
    const out = join(work, 'flip');
    expectOk(
      await runCli('dfconvert', [...convertArgs(), '--force', fx.multilayer!.ref, `oci:${out}:dfb`]),
      'convert',
    );
    const { manifest } = await ociManifest(out, 'dfb');
    // The biggest layer: flip one byte in its first, middle and last block regions (one at a time).
    const layer = [...manifest.layers].sort((x: any, y: any) => y.size - x.size)[0];
    const tocOffset = Number(layer.annotations['dev.dfnode.dfb.toc.offset']);
    const path = join(out, 'blobs', 'sha256', layer.digest.slice(7));
    for (const at of [0, Math.floor(tocOffset / 2), tocOffset - 1]) {
      const fh = await open(path, 'r+');
      const b = Buffer.alloc(1);
      await fh.read(b, 0, 1, at);
      await fh.write(Buffer.from([b[0]! ^ 0x01]), 0, 1, at);
      const v = await runCli('dfconvert', ['verify', fx.multilayer!.ref, `oci:${out}:dfb`]);
      await fh.write(b, 0, 1, at);
      await fh.close();
      expectCleanFailure(v, /block|digest/i);
    }
    expectOk(await runCli('dfconvert', ['verify', fx.multilayer!.ref, `oci:${out}:dfb`]), 'restored');

    // A converted image whose layer lacks a file / has another mode than its claimed source.
    const base: TarEntry[] = [
      { path: 'etc/', type: 'directory' },
      { path: 'etc/a.conf', type: 'file', data: 'a\n' },
      { path: 'etc/b.conf', type: 'file', data: 'b\n', mode: 0o600 },
    ];
    const cases: Array<[string, TarEntry[], RegExp]> = [
      ['missing', base.filter((e) => e.path !== 'etc/b.conf'), /etc\/b\.conf.*missing/],
      [
        'mode',
        base.map((e) => (e.path === 'etc/b.conf' ? { ...e, mode: 0o644 } : e)),
        /etc\/b\.conf.*mode 600.*644/,
      ],
    ];
    const good = join(work, 'good');
    await makeImage(good, 'v1', [base]);
    for (const [name, entries, pattern] of cases) {
      const bad = join(work, `bad-${name}`);
      await makeImage(bad, 'v1', [entries]);
      expectOk(
        await runCli('dfconvert', [...convertArgs(), `oci:${bad}:v1`, `oci:${bad}:dfb`]),
        'convert bad',
      );
      // Make the converted image claim the good source (same source digest and config).
      const g = await ociManifest(good, 'v1');
      const m = await ociManifest(bad, 'dfb');
      m.manifest.layers[0].annotations['dev.dfnode.source.digest'] = g.manifest.layers[0].digest;
      m.manifest.config = g.manifest.config;
      await writeFile(
        join(bad, 'blobs', 'sha256', g.manifest.config.digest.slice(7)),
        await readFile(join(good, 'blobs', 'sha256', g.manifest.config.digest.slice(7))),
      );
      const bytes = Buffer.from(JSON.stringify(m.manifest));
      const d = sha256Digest(bytes);
      await writeFile(join(bad, 'blobs', 'sha256', d.slice(7)), bytes);
      const index = JSON.parse(await readFile(join(bad, 'index.json'), 'utf8'));
      index.manifests = index.manifests.map((x: any) =>
        x.annotations?.['org.opencontainers.image.ref.name'] === 'dfb'
          ? { ...x, digest: d, size: bytes.length }
          : x,
      );
      await writeFile(join(bad, 'index.json'), JSON.stringify(index));
      const v = await runCli('dfconvert', ['verify', `oci:${good}:v1`, `oci:${bad}:dfb`]);
      expectCleanFailure(v, pattern);
    }
  });

  it('fails clearly on bad input and never tags a partial image', async () => {
    const cases: Array<[string, Promise<Fixture>, RegExp]> = [
      [
        'corrupt gzip',
        corruptGzipLayer(fx.multilayer!.dir, { tag: fx.multilayer!.tag }),
        /corrupt gzip|gzip/i,
      ],
      [
        'truncated tar',
        truncatedTarLayer(fx.multilayer!.dir, { tag: fx.multilayer!.tag }),
        /truncated|end of/i,
      ],
      [
        'digest mismatch',
        wrongDigestLayer(fx.multilayer!.dir, { tag: fx.multilayer!.tag }),
        /digest mismatch/i,
      ],
      [
        'wrong diff id',
        wrongDiffIdLayer(fx.multilayer!.dir, { tag: fx.multilayer!.tag }),
        /uncompresses to diff ID sha256:[0-9a-f]{64}, but the image config says/,
      ],
      [
        'unknown media type',
        unknownMediaTypeLayer(fx.multilayer!.dir, { tag: fx.multilayer!.tag }),
        /unknown layer media type .*tar\+bzip2/,
      ],
    ];
    for (const [name, fixture, pattern] of cases) {
      const f = await fixture;
      const dst = `${reg.host}/broken-${name.replace(/\s+/g, '-')}:dfb`;
      const r = await runCli('dfconvert', [...convertArgs(), f.ref, dst]);
      expectCleanFailure(r, pattern, name);
      const inspect = await runCli('dfconvert', ['verify', '--plain-http', f.ref, dst]);
      expect(inspect.stderr).toMatch(/not found/);
      await rm(f.dir, { recursive: true, force: true });
    }
    const missing = await runCli('dfconvert', [...convertArgs(), `${reg.host}/does-not-exist:1`]);
    expectCleanFailure(missing, /not found/i);
    const badRef = await runCli('dfconvert', [...convertArgs(), 'UPPER/Case::x']);
    expectCleanFailure(badRef, /reference|invalid/i);
  });

  it('stops on SIGINT without tagging anything', async () => {
    // A proxy that sends the first 1 MiB of each blob and then stalls: the conversion is certainly under
    // way (and not finished) when the interrupt comes.
    let stalled!: () => void;
    const midLayer = new Promise<void>((r) => (stalled = r));
    const sockets = new Set<import('node:net').Socket>();
    const proxy = createServer((req, res) => {
      const up = httpRequest(
        {
          host: '127.0.0.1',
          port: Number(reg.host.split(':')[1]),
          method: req.method,
          path: req.url,
          headers: req.headers,
        },
        (ures) => {
          res.writeHead(ures.statusCode ?? 502, ures.headers);
          if (!/\/blobs\/sha256:/.test(req.url ?? '') || req.method !== 'GET') return void ures.pipe(res);
          let sent = 0;
          ures.on('data', (c: Buffer) => {
            if (sent >= 1 << 20) return void (ures.pause(), stalled());
            sent += c.length;
            res.write(c);
          });
          ures.on('end', () => res.end());
        },
      );
      up.on('error', () => res.destroy());
      req.pipe(up);
    });
    proxy.on('connection', (s) => sockets.add(s));
    await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
    const host = `127.0.0.1:${(proxy.address() as AddressInfo).port}`;
    try {
      let pid = 0;
      const dst = `${host}/debian:interrupted`;
      const p = runCli('dfconvert', [...convertArgs(), '--force', `${host}/debian:1`, dst], {
        onSpawn: (x) => (pid = x),
      });
      await midLayer;
      process.kill(pid, 'SIGINT');
      const r = await p;
      expect(r.code).toBe(130);
      expect(r.stderr).toMatch(/interrupted|SIGINT/);
      const check = await runCli('dfconvert', [
        'verify',
        '--plain-http',
        `${reg.host}/debian:1`,
        `${reg.host}/debian:interrupted`,
      ]);
      expect(check.stderr).toMatch(/not found/);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((r) => proxy.close(r));
    }
  });

  it('converts every platform of an index, or only those named with --platform', async () => {
    const dir = join(work, 'multi');
    await makeImage(join(work, 'multi-amd64'), 'x', [[{ path: 'arch', type: 'file', data: 'amd64\n' }]]);
    await makeImage(join(work, 'multi-arm64'), 'x', [[{ path: 'arch', type: 'file', data: 'arm64\n' }]]);
    await mkdir(join(dir, 'blobs', 'sha256'), { recursive: true });
    const children: Descriptor[] = [];
    for (const arch of ['amd64', 'arm64']) {
      const sub = join(work, `multi-${arch}`);
      const m = await ociManifest(sub, 'x');
      for (const f of await readdir(join(sub, 'blobs', 'sha256')))
        await writeFile(join(dir, 'blobs', 'sha256', f), await readFile(join(sub, 'blobs', 'sha256', f)));
      const bytes = await readFile(join(sub, 'blobs', 'sha256', m.digest.slice(7)));
      children.push({
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        digest: m.digest,
        size: bytes.length,
        platform: { os: 'linux', architecture: arch },
      });
    }
    const index = await writeJsonBlob(dir, MT.ociIndex, {
      schemaVersion: 2,
      mediaType: MT.ociIndex,
      manifests: children,
    });
    await writeIndex(dir, [tagged(index, 'multi')]);
    expectOk(await runCli('dfconvert', [...convertArgs(), `oci:${dir}:multi`]), 'convert index');
    const all = await ociManifest(dir, 'multi-dfb');
    expect(all.manifest.manifests.map((m: any) => m.platform.architecture)).toEqual(['amd64', 'arm64']);
    expectOk(
      await runCli('dfconvert', ['verify', `oci:${dir}:multi`, `oci:${dir}:multi-dfb`]),
      'verify index',
    );
    expectOk(
      await runCli('dfconvert', [
        ...convertArgs(),
        '--platform',
        'linux/arm64',
        `oci:${dir}:multi`,
        `oci:${dir}:arm`,
      ]),
      'convert one platform',
    );
    const one = await ociManifest(dir, 'arm');
    expect(one.manifest.manifests.map((m: any) => m.platform.architecture)).toEqual(['arm64']);
    expectOk(
      await runCli('dfconvert', ['verify', `oci:${dir}:multi`, `oci:${dir}:arm`]),
      'verify one platform',
    );
    const none = await runCli('dfconvert', [
      ...convertArgs(),
      '--platform',
      'linux/s390x',
      `oci:${dir}:multi`,
      `oci:${dir}:none`,
    ]);
    expectCleanFailure(none, /no image matches --platform linux\/s390x/);
  });
});
