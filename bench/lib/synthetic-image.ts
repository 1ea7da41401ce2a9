// A deterministic one-layer OCI image of generated files, for transfer benchmarks and tests that need an
// image of a chosen size: each file is AES-CTR keystream (incompressible) with runs of repeated text
// mixed in (compressible), so LZ4 blocks come out at roughly `incompressible` of their input size.
// Layout: uncompressed tar layer (media type ...layer.v1.tar), config, manifest, index with tag `latest`.
import { createCipheriv, createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { putJsonBlob, writeImageIndex } from './oci-layout.js';

export interface SyntheticImageOptions {
  /** Total bytes of file data (split evenly over `files`). */
  bytes: number;
  files?: number;
  /** Fraction of each 64 KiB stretch that is random (the rest is repeated text). Default 0.75. */
  incompressible?: number;
  /** Changes every byte (different seeds: different images). */
  seed?: string;
}

export interface SyntheticImage {
  dir: string;
  tag: string;
  /** Digest and size of the (uncompressed tar) layer blob. */
  layerDigest: string;
  layerSize: number;
}

const CHUNK = 64 * 1024;
const TEXT = Buffer.from('dfnode synthetic layer: the quick brown fox jumps over the lazy dog. 0123456789\n');

function* fileChunks(seed: string, index: number, size: number, incompressible: number): Generator<Buffer> {
  const key = createHash('sha256').update(`${seed}/${index}`).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  const randomLen = Math.round(CHUNK * incompressible);
  const text = Buffer.alloc(CHUNK - randomLen);
  for (let i = 0; i < text.length; i += TEXT.length) TEXT.copy(text, i);
  for (let left = size; left > 0; left -= CHUNK) {
    const chunk = Buffer.concat([cipher.update(Buffer.alloc(randomLen)), text]);
    yield left >= CHUNK ? chunk : chunk.subarray(0, left);
  }
}

async function sha256Of(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const b of createReadStream(path)) h.update(b as Buffer);
  return 'sha256:' + h.digest('hex');
}

/** Writes the image as an OCI layout in `dir` (replacing it) and returns its tag and layer digest. */
export async function writeSyntheticImage(dir: string, opts: SyntheticImageOptions): Promise<SyntheticImage> {
  const files = opts.files ?? 4;
  const seed = opts.seed ?? 'dfnode';
  const incompressible = opts.incompressible ?? 0.75;
  await rm(dir, { recursive: true, force: true });
  const blobs = join(dir, 'blobs', 'sha256');
  await mkdir(blobs, { recursive: true });

  const tmpTar = join(dir, 'layer.tar');
  const pack = tar.pack();
  const out = pipeline(pack, createWriteStream(tmpTar));
  const mtime = new Date(1_700_000_000_000);
  pack.entry({ name: 'data/', type: 'directory', mode: 0o755, mtime, uid: 0, gid: 0 });
  const per = Math.floor(opts.bytes / files);
  for (let i = 0; i < files; i++) {
    const size = i === files - 1 ? opts.bytes - per * (files - 1) : per;
    await new Promise<void>((res, rej) => {
      const entry = pack.entry(
        { name: `data/file-${i}.bin`, size, mode: 0o644, mtime, uid: 0, gid: 0 },
        (err) => (err ? rej(err) : res()),
      );
      void (async () => {
        let prev: Buffer | undefined;
        for (const chunk of fileChunks(seed, i, size, incompressible)) {
          if (prev && !entry.write(prev)) await new Promise<void>((r) => entry.once('drain', () => r()));
          prev = chunk;
        }
        entry.end(prev!);
      })().catch(rej);
    });
  }
  pack.finalize();
  await out;

  const layerDigest = await sha256Of(tmpTar);
  const layerSize = (await stat(tmpTar)).size;
  await rename(tmpTar, join(blobs, layerDigest.slice(7)));

  const config = await putJsonBlob(dir, {
    architecture: 'amd64',
    os: 'linux',
    config: { Cmd: ['/bin/sh'] },
    rootfs: { type: 'layers', diff_ids: [layerDigest] },
    history: [{ created_by: 'dfnode synthetic-image', created: mtime.toISOString() }],
  });
  const manifest = await putJsonBlob(dir, {
    schemaVersion: 2,
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: layerDigest, size: layerSize }],
  });
  await writeImageIndex(dir, manifest, 'latest');
  return { dir, tag: 'latest', layerDigest, layerSize };
}
