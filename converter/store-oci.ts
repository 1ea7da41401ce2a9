import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { FileRangeReader } from '../src/blob/file-range-reader.js';
import type { RangeReader } from '../src/blob/types.js';
import { DfError } from '../src/errors.js';
import {
  canonicalJson,
  indexSchema,
  MediaTypes,
  sha256Digest,
  type Descriptor,
  type ImageIndex,
} from '../src/registry/oci.js';
import type { ImageStore, PushOptions, PushResult, RootManifest } from './store.js';

const REF_NAME = 'org.opencontainers.image.ref.name';

function blobPath(dir: string, digest: string): string {
  // The digest becomes a file name: only the one algorithm and exact hex, never a path.
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m)
    throw DfError.invalidArgument(
      `digest ${JSON.stringify(digest)} is not sha256:<64 hex>; refusing to use it as a path in ${dir}`,
    );
  return join(dir, 'blobs', 'sha256', m[1]!);
}

/** An OCI image layout directory (image-spec "image layout"), read and written atomically. */
export class OciLayoutStore implements ImageStore {
  readonly description: string;

  constructor(
    readonly dir: string,
    readonly tagName: string | undefined,
  ) {
    this.description = `oci:${dir}${tagName ? ':' + tagName : ''}`;
  }

  private async readIndex(): Promise<ImageIndex | undefined> {
    let text: string;
    try {
      text = await readFile(join(this.dir, 'index.json'), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw DfError.from(err, `read ${this.dir}/index.json`);
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw DfError.corrupt(`${this.dir}/index.json is not valid JSON: ${(err as Error).message}`);
    }
    const r = indexSchema.safeParse(json);
    if (!r.success)
      throw DfError.corrupt(`${this.dir}/index.json is malformed: ${r.error.issues[0]?.message}`);
    return r.data;
  }

  async resolveRoot(signal?: AbortSignal): Promise<RootManifest | undefined> {
    const index = await this.readIndex();
    if (!index) return undefined;
    let desc: Descriptor | undefined;
    if (this.tagName) desc = index.manifests.find((m) => m.annotations?.[REF_NAME] === this.tagName);
    else if (index.manifests.length === 1) desc = index.manifests[0];
    else if (index.manifests.length > 1)
      throw DfError.invalidArgument(
        `${this.dir} holds ${index.manifests.length} images; name one with oci:${this.dir}:TAG (tags: ${index.manifests
          .map((m) => m.annotations?.[REF_NAME])
          .filter(Boolean)
          .join(', ')})`,
      );
    if (!desc) return undefined;
    const bytes = await this.getManifest(desc.digest, desc.mediaType, signal);
    return { mediaType: desc.mediaType, digest: desc.digest, bytes };
  }

  async getManifest(digest: string, _mediaType: string, signal?: AbortSignal): Promise<Buffer> {
    signal?.throwIfAborted();
    let bytes: Buffer;
    try {
      bytes = await readFile(blobPath(this.dir, digest));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw DfError.notFound(`${this.description}: manifest ${digest} is missing from the layout`);
      throw DfError.from(err, `read manifest ${digest}`);
    }
    const actual = sha256Digest(bytes);
    if (actual !== digest) throw DfError.digestMismatch(`${this.description}: manifest blob`, digest, actual);
    return bytes;
  }

  async openBlob(digest: string, _size: number, signal?: AbortSignal): Promise<Readable> {
    const p = blobPath(this.dir, digest);
    try {
      await stat(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT')
        throw DfError.notFound(`${this.description}: blob ${digest} is missing from the layout`);
      throw DfError.from(err, `open blob ${digest}`);
    }
    return createReadStream(p, { highWaterMark: 4 << 20, signal });
  }

  async blobReader(digest: string): Promise<RangeReader> {
    return FileRangeReader.open(blobPath(this.dir, digest));
  }

  async hasBlob(digest: string): Promise<boolean> {
    try {
      await stat(blobPath(this.dir, digest));
      return true;
    } catch {
      return false;
    }
  }

  private async ensureLayout(): Promise<void> {
    await mkdir(join(this.dir, 'blobs', 'sha256'), { recursive: true });
    try {
      await stat(join(this.dir, 'oci-layout'));
    } catch {
      await writeFile(join(this.dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    }
  }

  async putBlob(
    digest: string,
    size: number,
    open: () => Readable,
    opts: PushOptions = {},
  ): Promise<PushResult> {
    if (await this.hasBlob(digest)) return 'exists';
    await this.ensureLayout();
    const final = blobPath(this.dir, digest);
    const tmp = `${final}.tmp-${randomBytes(6).toString('hex')}`;
    const hash = createHash('sha256');
    let n = 0;
    try {
      const src = open();
      src.on('data', (c: Buffer) => {
        hash.update(c);
        n += c.length;
        opts.onProgress?.(c.length);
      });
      await pipeline(src, createWriteStream(tmp), { signal: opts.signal });
      const actual = 'sha256:' + hash.digest('hex');
      if (actual !== digest) throw DfError.digestMismatch(`blob written to ${this.dir}`, digest, actual);
      if (n !== size) throw DfError.corrupt(`blob ${digest}: wrote ${n} bytes, expected ${size}`);
      await rename(tmp, final);
      return 'uploaded';
    } catch (err) {
      await rm(tmp, { force: true });
      throw DfError.from(err, `write blob ${digest} to ${this.dir}`);
    }
  }

  /** A blob dfconvert just wrote and hashed: moved into the layout (copied across file systems), not re-hashed. */
  async adoptBlobFile(
    digest: string,
    size: number,
    file: string,
    opts: PushOptions = {},
  ): Promise<PushResult> {
    opts.signal?.throwIfAborted();
    if (await this.hasBlob(digest)) return 'exists';
    await this.ensureLayout();
    const final = blobPath(this.dir, digest);
    const tmp = `${final}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      const st = await stat(file);
      if (st.size !== size)
        throw DfError.corrupt(`blob ${digest}: ${file} is ${st.size} bytes, expected ${size}`);
      try {
        await rename(file, final);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
        await copyFile(file, tmp);
        await rename(tmp, final);
      }
      opts.onProgress?.(size);
      return 'uploaded';
    } catch (err) {
      await rm(tmp, { force: true });
      throw DfError.from(err, `write blob ${digest} to ${this.dir}`);
    }
  }

  async putManifest(bytes: Buffer, _mediaType: string, digest: string): Promise<void> {
    await this.putBlob(digest, bytes.length, () => bufferStream(bytes));
  }

  async tag(bytes: Buffer, mediaType: string, digest: string): Promise<void> {
    await this.ensureLayout();
    const index: ImageIndex = (await this.readIndex()) ?? { schemaVersion: 2, manifests: [] };
    const tag = this.tagName ?? 'latest';
    const others = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== tag);
    const desc: Descriptor = { mediaType, digest, size: bytes.length, annotations: { [REF_NAME]: tag } };
    const next = { schemaVersion: 2, mediaType: MediaTypes.ociIndex, manifests: [...others, desc] } as Record<
      string,
      unknown
    >;
    if (index.annotations) next.annotations = index.annotations;
    const tmp = join(this.dir, `index.json.tmp-${randomBytes(6).toString('hex')}`);
    await writeFile(tmp, canonicalJson(next));
    await rename(tmp, join(this.dir, 'index.json'));
  }

  async close(): Promise<void> {}
}

export function bufferStream(bytes: Buffer): Readable {
  return Readable.from([bytes], { objectMode: false });
}
