// Test images built on demand from test/fixtures/ (scripts, never committed
// binaries) into <repo>/.tmp/fixtures/<name>/, reused while the inputs of the
// build (script text, shared helpers, base fixture) hash the same.
//
//   const { dir, ref, tag } = await ensureFixture('busybox');   // ref: oci:DIR:latest
//   const tarPath = await ensureDockerArchive('edge');           // docker-archive:FILE
//   const bad = await corruptGzipLayer(dir, { tag });            // negative tests
//
// Builds run in a temporary directory and are renamed into place only when
// complete, under a per-fixture lock file, so interrupted or concurrent builds
// (several vitest processes) never expose a half-built layout.
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { constants, existsSync, readFileSync } from 'node:fs';
import { access, cp, mkdir, mkdtemp, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gunzipSync, gzipSync } from 'node:zlib';
import { writeDockerArchive } from '../fixtures/docker-archive.js';
import { EDGE_DOCKER_DIR, buildEdge } from '../fixtures/edge.js';
import {
  MT,
  blobPath,
  readBlob,
  resolveTag,
  retag,
  writeBlob,
  type Descriptor,
  type Manifest,
} from '../fixtures/oci-layout.js';
import { flipBits } from './bytes.js';

export type FixtureName =
  'busybox' | 'multilayer' | 'debian' | 'debian-python' | 'debian-dev' | 'debian-node' | 'edge';
export const FIXTURE_NAMES: readonly FixtureName[] = [
  'busybox',
  'multilayer',
  'debian',
  'debian-python',
  'debian-dev',
  'debian-node',
  'edge',
];

export interface Fixture {
  /** OCI image layout directory. */
  dir: string;
  /** Image reference for dfconvert/skopeo, e.g. `oci:/repo/.tmp/fixtures/busybox:latest`. */
  ref: string;
  tag: string;
}

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const SOURCES = join(REPO_ROOT, 'test', 'fixtures');
export const FIXTURES_DIR = process.env.DFNODE_FIXTURES_DIR ?? join(REPO_ROOT, '.tmp', 'fixtures');
/** Survives fixture rebuilds: debootstrap tree, .deb downloads. */
export const FIXTURE_CACHE = process.env.DFNODE_FIXTURE_CACHE ?? join(REPO_ROOT, '.tmp', 'fixtures-cache');
const TAG = 'latest';

interface FixtureSpec {
  /** Files whose content decides whether a build is stale (relative to test/fixtures). */
  inputs: string[];
  /** Shell script to run as `bash SCRIPT OUT TAG`, or an in-process builder. */
  script?: string;
  build?: (out: string) => Promise<void>;
  base?: FixtureName;
  /** Commands that must be on PATH. */
  tools: string[];
  root: boolean;
}

/** An image built on the debian fixture by apt-get in a chroot (`NAME.sh`). */
const onDebian = (name: string): FixtureSpec => ({
  script: `${name}.sh`,
  inputs: ['common.sh', 'apt-in-chroot.sh', `${name}.sh`],
  base: 'debian',
  tools: ['umoci', 'chroot', 'mount'],
  root: true,
});

const SPECS: Record<FixtureName, FixtureSpec> = {
  busybox: {
    script: 'busybox.sh',
    inputs: ['common.sh', 'busybox.sh'],
    tools: ['umoci', 'busybox'],
    root: true,
  },
  multilayer: {
    script: 'multilayer.sh',
    inputs: ['common.sh', 'multilayer.sh'],
    tools: ['umoci', 'python3', 'tar', 'mknod'],
    root: true,
  },
  debian: {
    script: 'debian.sh',
    inputs: ['common.sh', 'debian.sh'],
    tools: ['umoci', 'debootstrap', 'tar'],
    root: true,
  },
  'debian-python': onDebian('debian-python'),
  'debian-dev': onDebian('debian-dev'),
  'debian-node': onDebian('debian-node'),
  edge: { build: buildEdge, inputs: ['edge.ts', 'tar-builder.ts', 'oci-layout.ts'], tools: [], root: false },
};

function which(tool: string): boolean {
  return (process.env.PATH ?? '').split(':').some((p) => p && existsSync(join(p, tool)));
}

/**
 * Why `name` cannot be built here (not root, missing tools), or null if it can.
 * Includes the requirements of its base fixture.
 */
export function fixtureUnavailable(name: FixtureName): string | null {
  const reasons: string[] = [];
  for (let n: FixtureName | undefined = name; n; n = SPECS[n].base) {
    const spec = SPECS[n];
    if (spec.root && process.getuid?.() !== 0) reasons.push(`fixture ${n} needs root`);
    const missing = spec.tools.filter((t) => !which(t));
    if (missing.length) reasons.push(`fixture ${n} needs ${missing.join(', ')} on PATH`);
  }
  return reasons.length ? [...new Set(reasons)].join('; ') : null;
}

async function inputHash(name: FixtureName): Promise<string> {
  const h = createHash('sha256').update(`fixture:${name}\0`);
  const spec = SPECS[name];
  for (const f of spec.inputs) {
    h.update(`${f}\0`)
      .update(await readFile(join(SOURCES, f)))
      .update('\0');
  }
  if (spec.base) h.update(`base:${await readFile(join(FIXTURES_DIR, spec.base, '.stamp'), 'utf8')}`);
  return h.digest('hex');
}

async function isFresh(dir: string, hash: string): Promise<boolean> {
  try {
    const stamp = await readFile(join(dir, '.stamp'), 'utf8');
    await access(join(dir, 'index.json'), constants.R_OK);
    return stamp.trim() === hash;
  } catch {
    return false;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Exclusive lock file holding our pid; a lock whose holder died is taken over. */
async function withLock<T>(path: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
  for (;;) {
    signal?.throwIfAborted();
    try {
      const fh = await open(path, 'wx');
      await fh.writeFile(String(process.pid));
      await fh.close();
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number.parseInt(await readFile(path, 'utf8').catch(() => ''), 10);
      if (Number.isFinite(pid) && pid > 0 && !alive(pid)) {
        await rm(path, { force: true });
        continue;
      }
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  try {
    return await fn();
  } finally {
    await rm(path, { force: true });
  }
}

/** Unmount anything below dir (an interrupted chroot build) and remove it. */
function removeStale(dir: string): Promise<void> {
  let table = '';
  try {
    table = readFileSync('/proc/self/mounts', 'utf8');
  } catch {
    // not Linux: nothing can be mounted below dir
  }
  const mounts = table
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' ') ?? '')
    .filter((m) => m.startsWith(`${dir}/`))
    .sort()
    .reverse();
  for (const m of mounts) spawnSync('umount', ['-l', m], { stdio: 'ignore' });
  return rm(dir, { recursive: true, force: true });
}

function runScript(
  script: string,
  out: string,
  env: NodeJS.ProcessEnv,
  logFile: string,
  signal?: AbortSignal,
): Promise<void> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn('bash', [join(SOURCES, script), out, TAG], {
      env: { ...process.env, ...env, FIXTURE_CACHE },
      stdio: ['ignore', 'pipe', 'pipe'],
      signal,
      killSignal: 'SIGTERM',
    });
    const log: Buffer[] = [];
    const verbose = !!process.env.DFNODE_FIXTURE_VERBOSE;
    const onData = (d: Buffer): void => {
      log.push(d);
      if (verbose) process.stderr.write(d);
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('error', reject);
    child.on('close', (code, sig) => {
      const text = Buffer.concat(log).toString('utf8');
      void writeFile(logFile, text).finally(() => {
        if (code === 0) return resolvePromise();
        const tail = text.split('\n').slice(-30).join('\n');
        reject(
          new Error(`fixture script ${script} failed (${sig ?? `exit ${code}`}); log: ${logFile}\n${tail}`),
        );
      });
    });
  });
}

const inFlight = new Map<FixtureName, Promise<Fixture>>();

export interface EnsureOptions {
  signal?: AbortSignal;
}

/** Build (or reuse) fixture `name`; see the file comment. */
export function ensureFixture(name: FixtureName, opts: EnsureOptions = {}): Promise<Fixture> {
  let p = inFlight.get(name);
  if (!p) {
    p = doEnsure(name, opts).finally(() => inFlight.delete(name));
    inFlight.set(name, p);
  }
  return p;
}

async function doEnsure(name: FixtureName, opts: EnsureOptions): Promise<Fixture> {
  const spec = SPECS[name];
  const why = fixtureUnavailable(name);
  if (why) throw new Error(`cannot build fixture ${name}: ${why}`);
  const base = spec.base ? await ensureFixture(spec.base, opts) : undefined;
  await mkdir(FIXTURES_DIR, { recursive: true });
  const dir = join(FIXTURES_DIR, name);
  const result: Fixture = { dir, ref: `oci:${dir}:${TAG}`, tag: TAG };
  if (await isFresh(dir, await inputHash(name))) return result;

  return withLock(join(FIXTURES_DIR, `.${name}.lock`), opts.signal, async () => {
    const hash = await inputHash(name);
    if (await isFresh(dir, hash)) return result;
    // Leftovers of interrupted builds of this fixture.
    for (const e of await readdir(FIXTURES_DIR)) {
      if (
        e.startsWith(`.build-${name}.`) ||
        e.startsWith(`.work-.build-${name}.`) ||
        e.startsWith(`.old-${name}.`)
      ) {
        await removeStale(join(FIXTURES_DIR, e));
      }
    }
    const out = join(FIXTURES_DIR, `.build-${name}.${process.pid}.${randomBytes(4).toString('hex')}`);
    const started = Date.now();
    try {
      if (spec.script) {
        const env: NodeJS.ProcessEnv = base ? { BASE_OCI: base.dir, BASE_TAG: base.tag } : {};
        await runScript(spec.script, out, env, join(FIXTURES_DIR, `${name}.log`), opts.signal);
      } else {
        await spec.build!(out);
      }
      await writeFile(join(out, '.stamp'), `${hash}\n`);
      const old = join(FIXTURES_DIR, `.old-${name}.${randomBytes(4).toString('hex')}`);
      if (existsSync(dir)) await rename(dir, old);
      await rename(out, dir);
      await rm(old, { recursive: true, force: true });
    } catch (e) {
      await removeStale(out);
      throw e;
    }
    await writeFile(join(FIXTURES_DIR, `${name}.build-time`), `${Date.now() - started}\n`);
    return result;
  });
}

/** skopeo `dir:` reference of the edge image with Docker schema 2 media types. */
export async function ensureEdgeDockerDir(opts: EnsureOptions = {}): Promise<string> {
  const { dir } = await ensureFixture('edge', opts);
  return `dir:${join(dir, EDGE_DOCKER_DIR)}`;
}

/**
 * A `docker save` archive of fixture `name` (tag latest, named
 * dfnode-fixtures/<name>:latest), rebuilt when the fixture changes.
 * Use as `docker-archive:<path>`.
 */
export async function ensureDockerArchive(name: FixtureName, opts: EnsureOptions = {}): Promise<string> {
  const fx = await ensureFixture(name, opts);
  const file = join(FIXTURES_DIR, `${name}.docker-archive.tar`);
  const stampFile = `${file}.stamp`;
  const h = createHash('sha256')
    .update(await readFile(join(fx.dir, '.stamp')))
    .update(await readFile(join(fx.dir, 'index.json')))
    .update(await readFile(join(SOURCES, 'docker-archive.ts')))
    .digest('hex');
  const fresh = async (): Promise<boolean> =>
    existsSync(file) && (await readFile(stampFile, 'utf8').catch(() => '')).trim() === h;
  if (await fresh()) return file;
  return withLock(join(FIXTURES_DIR, `.${name}.docker-archive.lock`), opts.signal, async () => {
    if (await fresh()) return file;
    await writeDockerArchive(fx.dir, fx.tag, file, `dfnode-fixtures/${name}:${fx.tag}`);
    await writeFile(stampFile, `${h}\n`);
    return file;
  });
}

// ---------------------------------------------------------------------------
// Corrupted copies for negative tests. Each takes an OCI layout and writes a
// modified copy (default: a new directory under the OS temp dir, which the
// caller removes), changing exactly one layer, chosen by `layer` (index into
// the manifest's layers; default the first layer that fits).

export interface CorruptOptions {
  tag?: string;
  layer?: number;
  /** Where to write the copy (must not exist). */
  outDir?: string;
}

export interface CorruptFixture extends Fixture {
  /** Index and descriptor (after corruption) of the damaged layer. */
  layer: number;
  layerDigest: string;
}

async function copyLayout(src: string, outDir?: string): Promise<string> {
  const dst = outDir ?? (await mkdtemp(join(tmpdir(), 'dfnode-corrupt-')));
  await cp(src, dst, {
    recursive: true,
    filter: (s) => !s.endsWith('.stamp') && !s.includes(`/${EDGE_DOCKER_DIR}`),
  });
  return dst;
}

function pickLayer(
  m: Manifest,
  want: number | undefined,
  ok: (d: Descriptor) => boolean,
  what: string,
): number {
  if (want !== undefined) {
    if (!m.layers[want]) throw new Error(`layer ${want} does not exist (${m.layers.length} layers)`);
    if (!ok(m.layers[want]!)) throw new Error(`layer ${want} is not ${what}`);
    return want;
  }
  const i = m.layers.findIndex(ok);
  if (i < 0) throw new Error(`no ${what} layer in the image`);
  return i;
}

const isGzip = (d: Descriptor): boolean =>
  d.mediaType === MT.ociLayerGzip || d.mediaType === MT.dockerLayerGzip;
const isTarOrGzip = (d: Descriptor): boolean =>
  isGzip(d) || d.mediaType === MT.ociLayerTar || d.mediaType === MT.dockerLayerTar;

async function replaceLayer(
  dir: string,
  tag: string,
  i: number,
  blob: Buffer,
  mediaType?: string,
  diffId?: string,
): Promise<CorruptFixture> {
  const { manifest, config } = await resolveTag(dir, tag);
  const old = manifest.layers[i]!;
  const desc = { ...(await writeBlob(dir, mediaType ?? old.mediaType, blob)), annotations: old.annotations };
  if (!desc.annotations) delete desc.annotations;
  const layers = manifest.layers.slice();
  layers[i] = desc;
  let newConfig;
  if (diffId) {
    const diffIds = config.rootfs.diff_ids.slice();
    diffIds[i] = diffId;
    newConfig = { ...config, rootfs: { ...config.rootfs, diff_ids: diffIds } };
  }
  await retag(dir, tag, { ...manifest, layers }, newConfig);
  return { dir, ref: `oci:${dir}:${tag}`, tag, layer: i, layerDigest: desc.digest };
}

/**
 * Flip bytes inside the deflate stream of a gzip layer and store it under its
 * new (correct) digest: digest and size checks pass, decompression fails.
 */
export async function corruptGzipLayer(src: string, opts: CorruptOptions = {}): Promise<CorruptFixture> {
  const tag = opts.tag ?? TAG;
  const dir = await copyLayout(src, opts.outDir);
  const { manifest } = await resolveTag(dir, tag);
  const i = pickLayer(manifest, opts.layer, isGzip, 'a gzip');
  const blob = Buffer.from(await readBlob(dir, manifest.layers[i]!.digest));
  // Deflate data starts after the 10-byte header; damage a run early in it so
  // the failure is an invalid stream, not merely a CRC mismatch at the end.
  const start = Math.min(20, Math.max(10, blob.length - 16));
  for (let k = start; k < Math.min(blob.length - 8, start + 32); k++) flipBits(blob, k, 0xa5);
  return replaceLayer(dir, tag, i, blob);
}

/**
 * Valid gzip of a tar cut off in the middle of a file's data (no end-of-archive
 * blocks); blob digest and diff_id both match the truncated content.
 */
export async function truncatedTarLayer(src: string, opts: CorruptOptions = {}): Promise<CorruptFixture> {
  const tag = opts.tag ?? TAG;
  const dir = await copyLayout(src, opts.outDir);
  const { manifest } = await resolveTag(dir, tag);
  const i = pickLayer(manifest, opts.layer, (d) => isTarOrGzip(d) && d.size > 1024 + 64, 'a non-empty tar');
  const d = manifest.layers[i]!;
  const raw = await readBlob(dir, d.digest);
  const tar = isGzip(d) ? gunzipSync(raw) : raw;
  // Cut at 60% (not on a 512-byte boundary) so a header or file body is incomplete.
  const cut = Math.floor((tar.length * 0.6) / 512) * 512 + 100;
  const truncated = tar.subarray(0, Math.min(cut, tar.length - 1024 - 1));
  const diffId = `sha256:${createHash('sha256').update(truncated).digest('hex')}`;
  return replaceLayer(
    dir,
    tag,
    i,
    isGzip(d) ? gzipSync(truncated) : Buffer.from(truncated),
    undefined,
    diffId,
  );
}

/**
 * The layer blob's bytes no longer match the digest it is stored and
 * referenced under (same size, one byte changed in the middle).
 */
export async function wrongDigestLayer(src: string, opts: CorruptOptions = {}): Promise<CorruptFixture> {
  const tag = opts.tag ?? TAG;
  const dir = await copyLayout(src, opts.outDir);
  const { manifest } = await resolveTag(dir, tag);
  const i = pickLayer(manifest, opts.layer, (d) => d.size > 0, 'a non-empty');
  const d = manifest.layers[i]!;
  const path = blobPath(dir, d.digest);
  const blob = Buffer.from(await readFile(path));
  flipBits(blob, Math.floor(blob.length / 2), 0x01);
  await writeFile(path, blob);
  return { dir, ref: `oci:${dir}:${tag}`, tag, layer: i, layerDigest: d.digest };
}

/**
 * The image config names a different diff ID for one layer than its uncompressed content hashes to (the
 * layer itself is intact and matches its digest).
 */
export async function wrongDiffIdLayer(src: string, opts: CorruptOptions = {}): Promise<CorruptFixture> {
  const tag = opts.tag ?? TAG;
  const dir = await copyLayout(src, opts.outDir);
  const { manifest, config } = await resolveTag(dir, tag);
  const i = pickLayer(manifest, opts.layer, (d) => isTarOrGzip(d), 'a tar');
  const diffIds = config.rootfs.diff_ids.slice();
  diffIds[i] = `sha256:${createHash('sha256').update(`not layer ${i}`).digest('hex')}`;
  await retag(dir, tag, manifest, { ...config, rootfs: { ...config.rootfs, diff_ids: diffIds } });
  return { dir, ref: `oci:${dir}:${tag}`, tag, layer: i, layerDigest: manifest.layers[i]!.digest };
}

/**
 * A layer whose media type the converter does not support (default
 * `application/vnd.oci.image.layer.v1.tar+bzip2`, which no OCI spec defines; the bytes stay as they were).
 */
export const UNKNOWN_LAYER_MEDIA_TYPE = 'application/vnd.oci.image.layer.v1.tar+bzip2';

export async function unknownMediaTypeLayer(
  src: string,
  opts: CorruptOptions & { mediaType?: string } = {},
): Promise<CorruptFixture> {
  const tag = opts.tag ?? TAG;
  const dir = await copyLayout(src, opts.outDir);
  const { manifest } = await resolveTag(dir, tag);
  const i = pickLayer(manifest, opts.layer, () => true, 'any');
  const blob = await readBlob(dir, manifest.layers[i]!.digest);
  return replaceLayer(dir, tag, i, blob, opts.mediaType ?? UNKNOWN_LAYER_MEDIA_TYPE);
}
