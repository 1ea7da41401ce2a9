import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { dirname, join, normalize } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { z } from 'zod';
import { FileRangeReader } from '../src/blob/file-range-reader.js';
import type { RangeReader } from '../src/blob/types.js';
import { DfError } from '../src/errors.js';
import { canonicalJson, MediaTypes, sha256Digest } from '../src/registry/oci.js';
import type { ImageStore, RootManifest } from './store.js';
import { readTar } from './tar-reader.js';

const archiveManifestSchema = z.array(
  z.object({
    Config: z.string(),
    RepoTags: z.array(z.string()).nullable().optional(),
    Layers: z.array(z.string()),
  }),
);

async function hashFile(path: string): Promise<{ digest: string; size: number }> {
  const h = createHash('sha256');
  let size = 0;
  for await (const c of createReadStream(path, { highWaterMark: 1 << 20 })) {
    h.update(c as Buffer);
    size += (c as Buffer).length;
  }
  return { digest: 'sha256:' + h.digest('hex'), size };
}

async function isGzip(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(2);
    await fh.read(b, 0, 2, 0);
    return b[0] === 0x1f && b[1] === 0x8b;
  } finally {
    await fh.close();
  }
}

/** A `docker save` archive (read only): unpacked to a work directory, presented as a Docker v2 manifest. */
export class DockerArchiveStore implements ImageStore {
  readonly description: string;
  private root?: RootManifest;
  private readonly blobs = new Map<string, string>();
  private readonly manifests = new Map<string, Buffer>();
  /** Regular files unpacked, by their normalized path in the archive. */
  private readonly files = new Set<string>();
  /** Links in the archive (not created on disk): followed by hand, inside the archive only. */
  private readonly links = new Map<string, { target: string; hard: boolean }>();

  private constructor(
    readonly file: string,
    private readonly workDir: string,
  ) {
    this.description = `docker-archive:${file}`;
  }

  static async open(
    file: string,
    name: string | undefined,
    tmpRoot: string,
    signal?: AbortSignal,
  ): Promise<DockerArchiveStore> {
    await mkdir(tmpRoot, { recursive: true });
    const work = await mkdtemp(join(tmpRoot, 'docker-archive-'));
    const store = new DockerArchiveStore(file, work);
    try {
      await store.unpack(signal);
      await store.load(name);
      return store;
    } catch (err) {
      await rm(work, { recursive: true, force: true });
      throw DfError.from(err, `read ${store.description}`);
    }
  }

  private async unpack(signal?: AbortSignal): Promise<void> {
    let input: Readable;
    try {
      input = createReadStream(this.file, { highWaterMark: 1 << 20, signal });
    } catch (err) {
      throw DfError.from(err, `open ${this.file}`);
    }
    for await (const { header, body } of readTar(input as AsyncIterable<Buffer>)) {
      if (header.type !== 'file' && header.type !== 'symlink' && header.type !== 'hardlink') continue;
      const rel = normalize(header.name).replace(/^(\.\/|\/)+/, '');
      if (rel.startsWith('../') || rel === '..' || rel === '' || rel === '.')
        throw DfError.corrupt(`docker archive entry ${JSON.stringify(header.name)} escapes the archive`);
      if (header.type !== 'file') {
        this.links.set(rel, { target: header.linkname, hard: header.type === 'hardlink' });
        this.files.delete(rel);
        continue;
      }
      this.links.delete(rel);
      const dest = join(this.workDir, rel);
      await mkdir(dirname(dest), { recursive: true });
      await pipeline(Readable.from(body), createWriteStream(dest));
      this.files.add(rel);
    }
  }

  /**
   * The unpacked file that a `manifest.json` path names, following the archive's own links (old `docker save`
   * links duplicate layers). Any path that leaves the archive, or a link that points out of it, is refused:
   * the manifest is the image author's and must not read the converting host's files.
   */
  private member(path: string, what: string): string {
    const refuse = (why: string) =>
      DfError.corrupt(
        `${this.description}: manifest.json ${what} ${JSON.stringify(path)} ${why}; refusing to read outside the archive`,
      );
    if (path.startsWith('/')) throw refuse('is an absolute path');
    let pending = path.split('/');
    let out: string[] = [];
    let hops = 0;
    while (pending.length) {
      const c = pending.shift()!;
      if (c === '' || c === '.') continue;
      if (c === '..') {
        if (!out.length) throw refuse('leaves the archive');
        out.pop();
        continue;
      }
      out.push(c);
      const link = this.links.get(out.join('/'));
      if (!link) continue;
      if (++hops > 40) throw refuse('goes through a loop of links');
      if (link.target.startsWith('/'))
        throw refuse(`goes through a link to the absolute path ${link.target}`);
      out.pop();
      if (link.hard) out = [];
      pending = [...link.target.split('/'), ...pending];
    }
    const rel = out.join('/');
    if (!this.files.has(rel)) throw refuse('is not a file in the archive');
    return join(this.workDir, rel);
  }

  private async load(name: string | undefined): Promise<void> {
    let parsed;
    try {
      parsed = archiveManifestSchema.parse(
        JSON.parse(await readFile(join(this.workDir, 'manifest.json'), 'utf8')),
      );
    } catch (err) {
      throw DfError.corrupt(
        `${this.description} is not a docker archive (manifest.json missing or malformed: ${(err as Error).message})`,
      );
    }
    let entry: (typeof parsed)[number] | undefined = parsed[0];
    if (name) {
      const want = name.includes(':') ? name : `${name}:latest`;
      entry = parsed.find((e) => (e.RepoTags ?? []).some((t) => t === want || t.endsWith('/' + want)));
      if (!entry) throw DfError.notFound(`${this.description} has no image named ${want}`);
    } else if (parsed.length > 1) {
      throw DfError.invalidArgument(
        `${this.description} holds ${parsed.length} images; name one with docker-archive:FILE:NAME:TAG`,
      );
    }
    if (!entry) throw DfError.corrupt(`${this.description} holds no image`);

    const configPath = this.member(entry.Config, 'Config');
    const config = await hashFile(configPath);
    this.blobs.set(config.digest, configPath);
    const layers = [];
    for (const l of entry.Layers) {
      const p = this.member(l, 'layer');
      const h = await hashFile(p);
      this.blobs.set(h.digest, p);
      layers.push({
        mediaType: (await isGzip(p)) ? MediaTypes.dockerLayerGzip : MediaTypes.dockerLayerTar,
        size: h.size,
        digest: h.digest,
      });
    }
    const manifest = {
      schemaVersion: 2,
      mediaType: MediaTypes.dockerManifest,
      config: { mediaType: MediaTypes.dockerConfig, size: config.size, digest: config.digest },
      layers,
    };
    const bytes = canonicalJson(manifest);
    const digest = sha256Digest(bytes);
    this.manifests.set(digest, bytes);
    this.root = { mediaType: MediaTypes.dockerManifest, digest, bytes };
  }

  async resolveRoot(): Promise<RootManifest | undefined> {
    return this.root;
  }

  async getManifest(digest: string): Promise<Buffer> {
    const m = this.manifests.get(digest);
    if (!m) throw DfError.notFound(`${this.description}: no manifest ${digest}`);
    return m;
  }

  private path(digest: string): string {
    const p = this.blobs.get(digest);
    if (!p) throw DfError.notFound(`${this.description}: no blob ${digest}`);
    return p;
  }

  async openBlob(digest: string, _size: number, signal?: AbortSignal): Promise<Readable> {
    return createReadStream(this.path(digest), { highWaterMark: 1 << 20, signal });
  }

  async blobReader(digest: string): Promise<RangeReader> {
    return FileRangeReader.open(this.path(digest));
  }

  async hasBlob(digest: string): Promise<boolean> {
    return this.blobs.has(digest);
  }

  async putBlob(): Promise<never> {
    throw DfError.unsupported('docker-archive is supported as a source only; write to a registry or oci:DIR');
  }
  async putManifest(): Promise<never> {
    return this.putBlob();
  }
  async tag(): Promise<never> {
    return this.putBlob();
  }

  async close(): Promise<void> {
    await rm(this.workDir, { recursive: true, force: true });
  }
}
