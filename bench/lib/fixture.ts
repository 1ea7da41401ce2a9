// Benchmark inputs: a test fixture image (OCI layout under .tmp/fixtures/NAME)
// and what each tool needs from it — uncompressed layer tars, extracted trees,
// an uncompressed-layer copy of the image, an oci-archive for containerd.
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { run } from './measure.js';
import { putJsonBlob, writeImageIndex } from './oci-layout.js';

const GZIP_LAYER = /\.tar\+gzip$|\.tar\.gzip$|diff\.tar\.gzip$/;
const TAR_LAYER = 'application/vnd.oci.image.layer.v1.tar';

export interface Layer {
  digest: string;
  mediaType: string;
  /** Size of the layer blob as stored (gzip). */
  size: number;
  /** Path of the blob in the layout. */
  blob: string;
  /** Uncompressed tar, filled by prepare(). */
  tar?: string;
  tarDigest?: string;
  uncompressedSize?: number;
  /** Extracted tree, filled by prepare(). */
  tree?: string;
}

export interface BenchImage {
  name: string;
  dir: string;
  tag: string;
  configDigest: string;
  layers: Layer[];
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

function blobPath(dir: string, digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m) throw new Error(`unsupported digest ${digest}`);
  return join(dir, 'blobs', 'sha256', m[1]!);
}

/**
 * The fixture's OCI layout: `.tmp/fixtures/NAME` if it exists, else built with `npm run fixtures -- NAME`
 * (the test fixture builder, run through tsx: test/ is not compiled into dist).
 */
export async function locateFixture(
  repoRoot: string,
  name: string,
  log: (s: string) => void,
): Promise<string> {
  const dir = resolve(process.env.DFNODE_FIXTURES_DIR ?? join(repoRoot, '.tmp', 'fixtures'), name);
  if (existsSync(join(dir, 'index.json'))) return dir;
  log(`fixture ${name} missing at ${dir}; building it with npm run fixtures -- ${name} (may take minutes)`);
  await run('npm', ['run', '--silent', 'fixtures', '--', name], { cwd: repoRoot });
  if (!existsSync(join(dir, 'index.json'))) throw new Error(`fixture build did not produce ${dir}`);
  return dir;
}

/** Layers of the image tagged `tag` in an OCI layout (a single-platform manifest). */
export async function readImage(name: string, dir: string, tag: string): Promise<BenchImage> {
  const index = JSON.parse(await readFile(join(dir, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === tag);
  if (!desc) throw new Error(`${dir} has no tag ${tag}`);
  const manifest = JSON.parse(await readFile(blobPath(dir, desc.digest), 'utf8')) as {
    config?: Descriptor;
    layers?: Descriptor[];
  };
  if (!manifest.config || !manifest.layers) throw new Error(`${dir}:${tag} is not a single image manifest`);
  const layers = manifest.layers.map((l) => {
    if (!GZIP_LAYER.test(l.mediaType))
      throw new Error(`layer ${l.digest} is ${l.mediaType}; expected gzip tar`);
    return { digest: l.digest, mediaType: l.mediaType, size: l.size, blob: blobPath(dir, l.digest) };
  });
  return { name, dir, tag, configDigest: manifest.config.digest, layers };
}

/**
 * Decompress every layer to a tar (digest and size measured), extract it to a
 * tree as tar does for root (numeric owners, xattrs), and flush to disk so that
 * no writeback runs during the timed part.
 */
export async function prepareLayers(image: BenchImage, work: string): Promise<void> {
  await mkdir(work, { recursive: true });
  for (const [i, layer] of image.layers.entries()) {
    layer.tar = join(work, `layer-${i}.tar`);
    const hash = createHash('sha256');
    let size = 0;
    await pipeline(
      createReadStream(layer.blob),
      createGunzip(),
      async function* (src) {
        for await (const chunk of src as AsyncIterable<Buffer>) {
          hash.update(chunk);
          size += chunk.length;
          yield chunk;
        }
      },
      createWriteStream(layer.tar),
    );
    layer.tarDigest = `sha256:${hash.digest('hex')}`;
    layer.uncompressedSize = size;
    layer.tree = join(work, `tree-${i}`);
    await mkdir(layer.tree, { recursive: true });
    const own = process.getuid?.() === 0 ? ['--numeric-owner', '--same-owner'] : [];
    await run('tar', ['-xf', layer.tar, '-C', layer.tree, ...own, '--xattrs', '--xattrs-include=*']);
  }
  await run('sync', []);
}

/**
 * The same image with uncompressed tar layers (same diff IDs, same config), so
 * dfconvert can be timed without gunzip.
 */
export async function writeTarLayout(image: BenchImage, out: string, tag: string): Promise<void> {
  await mkdir(join(out, 'blobs', 'sha256'), { recursive: true });
  const put = async (digest: string, from: string) => {
    const dst = blobPath(out, digest);
    if (!existsSync(dst)) await pipeline(createReadStream(from), createWriteStream(dst));
  };
  const layers: Descriptor[] = [];
  for (const l of image.layers) {
    await put(l.tarDigest!, l.tar!);
    layers.push({ mediaType: TAR_LAYER, digest: l.tarDigest!, size: l.uncompressedSize! });
  }
  const configBlob = blobPath(image.dir, image.configDigest);
  await put(image.configDigest, configBlob);
  const manifest = await putJsonBlob(out, {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: {
      mediaType: 'application/vnd.oci.image.config.v1+json',
      digest: image.configDigest,
      size: (await stat(configBlob)).size,
    },
    layers,
  });
  await writeImageIndex(out, manifest, tag);
}

/** Read files once so that every tool starts from a warm page cache. */
export async function warm(paths: string[]): Promise<void> {
  for (const p of paths) {
    for await (const _ of createReadStream(p, { highWaterMark: 1 << 20 })) {
      // discard
    }
  }
}
