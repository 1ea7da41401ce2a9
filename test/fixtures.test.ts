// The fixture images hold what they claim. Fixtures that need root or tools
// missing here are skipped with a printed reason (and fail when CI is set).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, existsSync, lstatSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { extract, type Header } from 'tar-stream';
import { afterAll, describe, expect, it } from 'vitest';
import { BINARY_XATTR, EDGE_DOCKER_TAG, GNU_LONG_PATH, LONG_PATH, LONG_TARGET } from './fixtures/edge.js';
import { MT, blobPath, readBlob, resolveTag, type Descriptor } from './fixtures/oci-layout.js';
import { paxRecord } from './fixtures/tar-builder.js';
import { readTar as tarEntries } from '../converter/tar-reader.js';
import {
  corruptGzipLayer,
  ensureDockerArchive,
  ensureEdgeDockerDir,
  ensureFixture,
  fixtureUnavailable,
  truncatedTarLayer,
  UNKNOWN_LAYER_MEDIA_TYPE,
  unknownMediaTypeLayer,
  wrongDigestLayer,
  type FixtureName,
} from './helpers/fixtures.js';
import { sha256Hex } from './helpers/digest.js';

const cleanup: string[] = [];
afterAll(() => {
  for (const d of cleanup) rmSync(d, { recursive: true, force: true });
});

function which(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
}

/** Skip (locally) or fail (CI) when `reason` is set. */
function unavailable(ctx: { skip: (note?: string) => void }, reason: string | null): boolean {
  if (!reason) return false;
  if (process.env.CI) throw new Error(`required in CI: ${reason}`);
  console.warn(`skipped: ${reason}`);
  ctx.skip(reason);
  return true;
}

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return r.stdout;
}

interface Entry {
  h: Header;
  data: Buffer;
}

async function readTar(tar: Buffer): Promise<Entry[]> {
  const out: Entry[] = [];
  const ex = extract();
  const done = new Promise<void>((resolve, reject) => {
    ex.on('entry', (h, stream, next) => {
      const chunks: Buffer[] = [];
      stream.on('data', (c: unknown) => void chunks.push(c as Buffer));
      stream.on('end', () => {
        out.push({ h, data: Buffer.concat(chunks) });
        next();
      });
      stream.on('error', reject);
    });
    ex.on('finish', resolve);
    ex.on('error', reject);
  });
  Readable.from([tar]).pipe(ex);
  await done;
  return out;
}

function uncompress(d: Descriptor, blob: Buffer): Buffer {
  return d.mediaType.endsWith('gzip') ? gunzipSync(blob) : blob;
}

async function layers(
  dir: string,
  tag = 'latest',
): Promise<Array<{ d: Descriptor; tar: Buffer; entries: Entry[] }>> {
  const { manifest } = await resolveTag(dir, tag);
  const res = [];
  for (const d of manifest.layers) {
    const tar = uncompress(d, await readBlob(dir, d.digest));
    res.push({ d, tar, entries: await readTar(tar) });
  }
  return res;
}

const norm = (n: string): string => n.replace(/^\.\//, '').replace(/\/$/, '');
const find = (es: Entry[], name: string): Entry | undefined => es.find((e) => norm(e.h.name) === name);
const sha = sha256Hex;

function skopeoInspect(ref: string): void {
  if (!which('skopeo')) {
    if (process.env.CI) throw new Error('skopeo required in CI');
    console.warn(`skopeo not installed: not inspecting ${ref}`);
    return;
  }
  const info = JSON.parse(run('skopeo', ['inspect', ref])) as { Layers: string[] };
  expect(info.Layers.length).toBeGreaterThan(0);
}

function umociUnpack(dir: string, tag = 'latest'): string {
  const bundle = join(mkdtempSync(join(tmpdir(), 'dfnode-fx-')), 'bundle');
  cleanup.push(join(bundle, '..'));
  run('umoci', ['unpack', '--image', `${dir}:${tag}`, bundle]);
  return join(bundle, 'rootfs');
}

async function build(ctx: { skip: (note?: string) => void }, name: FixtureName) {
  if (unavailable(ctx, fixtureUnavailable(name))) return null;
  return ensureFixture(name);
}

describe('busybox', () => {
  it('is one layer of static busybox with applets, passwd and a sticky /tmp', async (ctx) => {
    const fx = await build(ctx, 'busybox');
    if (!fx) return;
    const { config } = await resolveTag(fx.dir, fx.tag);
    expect((config.config as { Cmd: string[] }).Cmd).toEqual(['/bin/sh']);
    const ls = await layers(fx.dir);
    expect(ls).toHaveLength(1);
    const es = ls[0]!.entries;
    expect(find(es, 'bin/busybox')!.h.size).toBeGreaterThan(500_000);
    expect(find(es, 'bin/sh')!.h).toMatchObject({ type: 'link', linkname: 'bin/busybox' });
    for (const a of ['ls', 'cat', 'echo'])
      expect(find(es, `bin/${a}`)!.h).toMatchObject({ type: 'symlink', linkname: 'busybox' });
    expect(find(es, 'etc/passwd')!.data.toString()).toMatch(/^root:x:0:0:/);
    expect(find(es, 'tmp')!.h.mode! & 0o1777).toBe(0o1777);
    skopeoInspect(fx.ref);
    const rootfs = umociUnpack(fx.dir);
    expect(run('chroot', [rootfs, '/bin/sh', '-c', 'echo hello from $(cat /etc/hostname)'])).toBe(
      'hello from busybox\n',
    );
  });

  it('is reused while its script is unchanged', async (ctx) => {
    const fx = await build(ctx, 'busybox');
    if (!fx) return;
    const before = statSync(join(fx.dir, '.stamp')).mtimeMs;
    const again = await ensureFixture('busybox');
    expect(again).toEqual(fx);
    expect(statSync(join(fx.dir, '.stamp')).mtimeMs).toBe(before);
  });
});

describe('multilayer', () => {
  it('exercises whiteouts, opaque dirs, links, xattrs, modes, owners, devices and names', async (ctx) => {
    const fx = await build(ctx, 'multilayer');
    if (!fx) return;
    const ls = await layers(fx.dir);
    expect(ls.length).toBeGreaterThanOrEqual(3);
    const all = ls.flatMap((l) => l.entries);
    const names = all.map((e) => norm(e.h.name));
    expect(names.some((n) => n.endsWith('/.wh..wh..opq'))).toBe(true);
    expect(names.filter((n) => /(^|\/)\.wh\.[^.]/.test(n)).length).toBeGreaterThanOrEqual(3);
    expect(all.filter((e) => e.h.type === 'link').length).toBeGreaterThanOrEqual(3);
    const l0 = ls[0]!.entries;
    const symlinks = l0.filter((e) => e.h.type === 'symlink');
    expect(symlinks.map((e) => e.h.linkname)).toEqual(
      expect.arrayContaining(['../dup/a.txt', '/etc/passwd', '/does/not/exist']),
    );
    const xf = find(l0, 'data/xattr/file')!.h.pax!;
    expect(Object.keys(xf)).toEqual(
      expect.arrayContaining([
        'SCHILY.xattr.user.comment',
        'SCHILY.xattr.user.binary',
        'SCHILY.xattr.trusted.dfnode',
      ]),
    );
    expect(find(l0, 'data/xattr/ping')!.h.pax!).toHaveProperty(['SCHILY.xattr.security.capability']);
    expect(find(l0, 'data/modes/f4755')!.h.mode! & 0o4000).toBeTruthy();
    expect(find(l0, 'data/modes/f2755')!.h.mode! & 0o2000).toBeTruthy();
    expect(find(l0, 'data/modes/sticky')!.h.mode! & 0o1000).toBeTruthy();
    expect(find(l0, 'data/owners/u1000')!.h).toMatchObject({ uid: 1000, gid: 1000 });
    expect(find(l0, 'data/owners/nobody')!.h).toMatchObject({ uid: 65534, gid: 65534 });
    expect(find(l0, 'data/dev/null')!.h).toMatchObject({
      type: 'character-device',
      devmajor: 1,
      devminor: 3,
    });
    expect(find(l0, 'data/dev/loop9')!.h).toMatchObject({ type: 'block-device', devmajor: 7, devminor: 9 });
    expect(find(l0, 'data/dev/fifo')!.h.type).toBe('fifo');
    expect(find(l0, 'data/café/日本語.txt')).toBeDefined();
    expect(names.some((n) => Buffer.byteLength(n) > 255)).toBe(true);
    expect(find(l0, 'data/empty-dir')!.h.type).toBe('directory');
    expect(find(l0, 'data/big/big.bin')!.h.size).toBe(8 << 20);
    expect(l0.filter((e) => norm(e.h.name).startsWith('data/small/') && e.h.type === 'file').length).toBe(
      3000,
    );
    const a = find(l0, 'data/dup/a.txt')!.data;
    expect(sha(find(l0, 'data/dup/b.txt')!.data)).toBe(sha(a));
    expect(all.filter((e) => e.h.type === 'file' && e.h.size === 0).length).toBeGreaterThan(100);

    skopeoInspect(fx.ref);
    const r = umociUnpack(fx.dir);
    expect(existsSync(join(r, 'data/opaque-dir/old1'))).toBe(false);
    expect(readFileSync(join(r, 'data/opaque-dir/new.txt'), 'utf8')).toBe('only this survives\n');
    expect(existsSync(join(r, 'data/hand-whiteout'))).toBe(false);
    expect(existsSync(join(r, 'data/to-delete-dir'))).toBe(false);
    expect(readFileSync(join(r, 'data/replaced-dir/same.txt'), 'utf8')).toBe('kept name, new\n');
    expect(readlinkSync(join(r, 'data/links/dangling'))).toBe('/does/not/exist');
    expect(lstatSync(join(r, 'data/links/hard-a')).nlink).toBe(2); // hard-b removed in layer 4
  });
});

describe('debian', () => {
  it('is a bookworm minbase in one layer', async (ctx) => {
    if (unavailable(ctx, process.env.DFNODE_SKIP_DEBIAN ? 'DFNODE_SKIP_DEBIAN is set' : null)) return;
    const fx = await build(ctx, 'debian');
    if (!fx) return;
    const { manifest } = await resolveTag(fx.dir, fx.tag);
    expect(manifest.layers).toHaveLength(1);
    const [l] = await layers(fx.dir);
    expect(find(l!.entries, 'etc/debian_version')!.data.toString()).toMatch(/^12\./);
    expect(find(l!.entries, 'usr/bin/bash')).toBeDefined();
    expect(find(l!.entries, 'usr/bin/apt-get')).toBeDefined();
    skopeoInspect(fx.ref);
  });

  it('debian-python adds python3 in a second layer', async (ctx) => {
    if (unavailable(ctx, process.env.DFNODE_SKIP_DEBIAN ? 'DFNODE_SKIP_DEBIAN is set' : null)) return;
    const fx = await build(ctx, 'debian-python');
    if (!fx) return;
    const base = await ensureFixture('debian');
    const { manifest } = await resolveTag(fx.dir, fx.tag);
    const baseManifest = (await resolveTag(base.dir, base.tag)).manifest;
    expect(manifest.layers).toHaveLength(2);
    expect(manifest.layers[0]!.digest).toBe(baseManifest.layers[0]!.digest);
    const l1 = await readTar(gunzipSync(await readBlob(fx.dir, manifest.layers[1]!.digest)));
    expect(find(l1, 'usr/bin/python3.11')).toBeDefined();
    expect(l1.some((e) => norm(e.h.name).startsWith('usr/lib/python3.11/json/'))).toBe(true);
    skopeoInspect(fx.ref);
  });
});

describe('debian-dev', () => {
  it('is one layer of at least 250 MB with python3, perl and gcc', async (ctx) => {
    if (unavailable(ctx, process.env.DFNODE_SKIP_DEBIAN ? 'DFNODE_SKIP_DEBIAN is set' : null)) return;
    const fx = await build(ctx, 'debian-dev');
    if (!fx) return;
    const { manifest } = await resolveTag(fx.dir, fx.tag);
    expect(manifest.layers).toHaveLength(1);
    const tar = gunzipSync(await readBlob(fx.dir, manifest.layers[0]!.digest));
    expect(tar.length).toBeGreaterThanOrEqual(250e6);
    const names: string[] = [];
    for await (const { header, body } of tarEntries(Readable.from([tar]))) {
      names.push(norm(header.name));
      for await (const _ of body) void _;
    }
    for (const want of ['etc/debian_version', 'usr/bin/python3.11', 'usr/bin/perl', 'usr/include/stdio.h'])
      expect(names, want).toContain(want);
    expect(names.some((n) => /^usr\/lib\/gcc\/[^/]+\/12\/cc1plus$/.test(n))).toBe(true);
    skopeoInspect(fx.ref);
  });
});

describe('edge', () => {
  it('has hand-written layers with exact tar features and correct diff_ids', async () => {
    const fx = await ensureFixture('edge');
    const { config } = await resolveTag(fx.dir, fx.tag);
    const ls = await layers(fx.dir);
    expect(ls.map((l) => l.d.mediaType)).toEqual([
      MT.ociLayerGzip,
      MT.ociLayerTar,
      MT.ociLayerGzip,
      MT.ociLayerGzip,
    ]);
    expect(ls.map((l) => `sha256:${sha(l.tar)}`)).toEqual(config.rootfs.diff_ids);
    for (const l of ls) expect(sha(await readFile(blobPath(fx.dir, l.d.digest)))).toBe(l.d.digest.slice(7));

    const [l0, l1, l2, l3] = ls.map((l) => l.entries) as [Entry[], Entry[], Entry[], Entry[]];
    // Long names (PAX and GNU), long link targets, hard link to a long name.
    expect(find(l0, LONG_PATH)).toBeDefined();
    expect(Buffer.byteLength(LONG_PATH)).toBeGreaterThan(255);
    expect(find(l0, GNU_LONG_PATH)).toBeDefined();
    expect(ls[0]!.tar.includes('././@LongLink')).toBe(true);
    expect(find(l0, 'long/symlink-long-target')!.h.linkname).toBe(LONG_TARGET);
    expect(find(l0, 'gnu/symlink-gnu-long-target')!.h.linkname).toBe(LONG_TARGET);
    expect(find(l0, 'long/hardlink-to-long')!.h).toMatchObject({ type: 'link', linkname: LONG_PATH });
    expect(find(l0, 'links/hard2')!.h).toMatchObject({ type: 'link', linkname: 'links/hard1' });
    // Non-ASCII, xattrs with binary values (checked on the raw PAX bytes), ns mtimes.
    expect(find(l0, 'café/日本語.txt')!.data.toString()).toBe('こんにちは\n');
    expect(find(l0, 'café/ünïcödé-link')!.h.linkname).toBe('日本語.txt');
    expect(ls[0]!.tar.includes(paxRecord('SCHILY.xattr.user.binary', BINARY_XATTR))).toBe(true);
    expect(Object.keys(find(l0, 'xattr/file')!.h.pax!)).toEqual(
      expect.arrayContaining([
        'SCHILY.xattr.user.text',
        'SCHILY.xattr.trusted.dfnode.bin',
        'SCHILY.xattr.security.capability',
      ]),
    );
    expect((find(l0, 'times/nanos')!.h.pax as Record<string, string>)['mtime']).toBe('1700000000.123456789');
    expect((find(l0, 'owners/big-uid')!.h.pax as Record<string, string>)['uid']).toBe('3000000');
    // Order, duplicates, specials.
    const order = l0.map((e) => norm(e.h.name));
    expect(order.indexOf('late-dir/sub/file.txt')).toBeLessThan(order.indexOf('late-dir'));
    expect(order.includes('implicit/a/b/c')).toBe(false);
    expect(l0.filter((e) => norm(e.h.name) === 'dup/file')).toHaveLength(2);
    expect(find(l0, 'dev/loop0')!.h.type).toBe('block-device');
    expect(find(l0, 'dev/null')!.h.type).toBe('character-device');
    expect(find(l0, 'dev/fifo')!.h.type).toBe('fifo');
    expect(find(l0, 'modes/setuid')!.h.mode).toBe(0o4755);
    // Whiteouts, opaque marker after its siblings, empty layer.
    expect(find(l1, 'wh/.wh.gone.txt')).toBeDefined();
    const o = l1.map((e) => norm(e.h.name));
    expect(o.indexOf('opaque/.wh..wh..opq')).toBeGreaterThan(o.indexOf('opaque/new.txt'));
    expect(l2).toHaveLength(0);
    expect(ls[2]!.tar.length).toBe(1024);
    expect(find(l3, 'layer3/hard')!.h.type).toBe('link');
    skopeoInspect(fx.ref);
  });

  it('unpacks (umoci) to the tree the layers describe', async (ctx) => {
    if (unavailable(ctx, which('umoci') ? null : 'umoci not installed')) return;
    const fx = await ensureFixture('edge');
    const r = umociUnpack(fx.dir);
    expect(existsSync(join(r, 'wh/gone.txt'))).toBe(false);
    expect(existsSync(join(r, 'wh/gone-dir'))).toBe(false);
    expect(existsSync(join(r, 'wh/kept.txt'))).toBe(true);
    expect(existsSync(join(r, 'opaque/old.txt'))).toBe(false);
    expect(readFileSync(join(r, 'opaque/replaced.txt'), 'utf8')).toBe('new content\n');
    expect(readFileSync(join(r, 'recreate/me'), 'utf8')).toBe('layer 3 version\n');
    expect(readFileSync(join(r, 'dup/file'), 'utf8')).toBe('second version wins\n');
    expect(readFileSync(join(r, LONG_PATH), 'utf8')).toBe('long path via PAX\n');
    expect(readFileSync(join(r, GNU_LONG_PATH), 'utf8')).toBe('long path via GNU LongLink\n');
    expect(statSync(join(r, 'links/hard2')).ino).toBe(statSync(join(r, 'links/target')).ino);
  });

  it('has a Docker schema 2 variant', async () => {
    const fx = await ensureFixture('edge');
    const { manifest } = await resolveTag(fx.dir, EDGE_DOCKER_TAG);
    expect(manifest.mediaType).toBe(MT.dockerManifest);
    expect(manifest.config.mediaType).toBe(MT.dockerConfig);
    expect(manifest.layers.every((l) => l.mediaType === MT.dockerLayerGzip)).toBe(true);
    skopeoInspect(await ensureEdgeDockerDir());
  });
});

describe('docker-archive', () => {
  it.for(['edge', 'busybox'] as const)('%s has a docker save archive', async (name, ctx) => {
    if (unavailable(ctx, fixtureUnavailable(name))) return;
    const file = await ensureDockerArchive(name);
    const entries = await readTar(readFileSync(file));
    const manifest = JSON.parse(find(entries, 'manifest.json')!.data.toString()) as Array<{
      Config: string;
      RepoTags: string[];
      Layers: string[];
    }>;
    expect(manifest[0]!.RepoTags).toEqual([`dfnode-fixtures/${name}:latest`]);
    const fx = await ensureFixture(name);
    const { config } = await resolveTag(fx.dir, fx.tag);
    expect(manifest[0]!.Layers.map((p) => `sha256:${sha(find(entries, p)!.data)}`)).toEqual(
      config.rootfs.diff_ids,
    );
    skopeoInspect(`docker-archive:${file}`);
  });
});

describe('corruption helpers', () => {
  it('corruptGzipLayer: right digest, broken deflate stream', async () => {
    const fx = await ensureFixture('edge');
    const bad = await corruptGzipLayer(fx.dir);
    cleanup.push(bad.dir);
    const blob = await readBlob(bad.dir, bad.layerDigest);
    expect(sha(blob)).toBe(bad.layerDigest.slice(7));
    expect(() => gunzipSync(blob)).toThrow();
    expect((await resolveTag(bad.dir, bad.tag)).manifest.layers[bad.layer]!.digest).toBe(bad.layerDigest);
    // The source fixture is untouched.
    const { manifest } = await resolveTag(fx.dir, fx.tag);
    expect(gunzipSync(await readBlob(fx.dir, manifest.layers[0]!.digest)).length).toBeGreaterThan(0);
  });

  it('truncatedTarLayer: valid gzip and digests, tar cut short', async () => {
    const fx = await ensureFixture('edge');
    const bad = await truncatedTarLayer(fx.dir);
    cleanup.push(bad.dir);
    const { manifest, config } = await resolveTag(bad.dir, bad.tag);
    const blob = await readBlob(bad.dir, bad.layerDigest);
    expect(sha(blob)).toBe(bad.layerDigest.slice(7));
    const tar = uncompress(manifest.layers[bad.layer]!, blob);
    expect(`sha256:${sha(tar)}`).toBe(config.rootfs.diff_ids[bad.layer]);
    await expect(readTar(tar)).rejects.toThrow();
  });

  it('wrongDigestLayer: content does not match its name', async () => {
    const fx = await ensureFixture('edge');
    const bad = await wrongDigestLayer(fx.dir);
    cleanup.push(bad.dir);
    const { manifest } = await resolveTag(bad.dir, bad.tag);
    const d = manifest.layers[bad.layer]!;
    const blob = await readBlob(bad.dir, d.digest);
    expect(blob.length).toBe(d.size);
    expect(sha(blob)).not.toBe(d.digest.slice(7));
  });

  it('unknownMediaTypeLayer: a media type nothing defines', async () => {
    const fx = await ensureFixture('edge');
    const bad = await unknownMediaTypeLayer(fx.dir, { layer: 3 });
    cleanup.push(bad.dir);
    const { manifest } = await resolveTag(bad.dir, bad.tag);
    expect(manifest.layers[3]!.mediaType).toBe(UNKNOWN_LAYER_MEDIA_TYPE);
    expect(manifest.layers[0]!.mediaType).toBe(MT.ociLayerGzip);
  });
});

async function readFile(p: string): Promise<Buffer> {
  return readFileSync(p);
}
