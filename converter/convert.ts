import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ensureFreeSpace } from '../src/util/free-space.js';
import { formatPrefetchList, type PrefetchEntry } from '../src/blob/prefetch-list.js';
import { Annotations, DFB_LAYER_MEDIA_TYPE } from '../src/blob/types.js';
import { DfError } from '../src/errors.js';
import type { Logger } from '../src/log.js';
import { silentLogger } from '../src/log.js';
import { convertLayer } from './convert-layer.js';
import { explainLayerFailure } from './layer-input.js';
import {
  canonicalJson,
  layerCompression,
  MediaTypes,
  parseManifestOrIndex,
  platformMatches,
  platformString,
  sha256Digest,
  type Descriptor,
  type Manifest,
} from '../src/registry/oci.js';
import { shortDigest, silentProgress, type Progress } from './progress.js';
import { bufferStream } from './store-oci.js';
import type { ImageStore, RootManifest } from './store.js';
import { CONVERTER_VERSION } from './version.js';

export interface ConvertOptions {
  src: ImageStore;
  dst: ImageStore;
  blockSize: number;
  workers: number;
  /** Work directory: temporary blobs and the incremental-conversion index. */
  workDir: string;
  /** Free bytes of a directory (injectable for tests). */
  freeBytes?: (dir: string) => Promise<number>;
  /** `os/arch[/variant]` filters for image indexes; empty = every platform. */
  platforms: string[];
  /** Convert even when a converted layer could be reused. */
  force?: boolean;
  /**
   * Access-ordered layout (`--prefetch-list`, `--optimize`): in every layer the listed files it holds go first
   * in the data stream, in list order, and the TOC marks their read ranges for prefetch at mount.
   */
  prefetch?: readonly PrefetchEntry[];
  signal?: AbortSignal;
  progress?: Progress;
  logger?: Logger;
}

export interface LayerSummary {
  source: string;
  digest: string;
  size: number;
  reused: boolean;
  push: 'exists' | 'mounted' | 'uploaded' | 'skipped';
  bytesIn: number;
  uncompressedBytes: number;
  files: number;
  blocks: number;
  seconds: number;
}

export interface ConvertSummary {
  source: string;
  destination: string;
  digest: string;
  mediaType: string;
  manifests: Array<{ platform: string; digest: string; source: string }>;
  layers: LayerSummary[];
  bytesIn: number;
  bytesOut: number;
  uncompressedBytes: number;
  seconds: number;
}

/** Everything that changes the bytes of a converted layer; a layer is reused only when this matches. */
function optionsKey(blockSize: number, prefetch: readonly PrefetchEntry[] | undefined): string {
  const order = prefetch?.length
    ? `access:${createHash('sha256').update(formatPrefetchList(prefetch)).digest('hex').slice(0, 16)}`
    : 'tar';
  return `dfb=1;block-size=${blockSize};codec=lz4;order=${order}`;
}

type LayerIndex = Record<string, Descriptor>;

/** Converts an image (manifest or index) and pushes blobs, config, manifests and finally the tag. */
export class Converter {
  private readonly progress: Progress;
  private readonly log: Logger;
  private readonly opts: ConvertOptions;
  private readonly key: string;
  private reuse = new Map<string, Descriptor>();
  private localIndex: LayerIndex = {};
  private readonly converted = new Map<string, Promise<{ desc: Descriptor; summary: LayerSummary }>>();
  private readonly layers: LayerSummary[] = [];

  constructor(opts: ConvertOptions) {
    this.opts = opts;
    this.progress = opts.progress ?? silentProgress;
    this.log = opts.logger ?? silentLogger;
    this.key = optionsKey(opts.blockSize, opts.prefetch);
  }

  private get indexPath(): string {
    return join(this.opts.workDir, 'layers.json');
  }

  async run(): Promise<ConvertSummary> {
    const started = Date.now();
    const { src, dst, signal } = this.opts;
    await mkdir(join(this.opts.workDir, 'tmp'), { recursive: true });
    const root = await src.resolveRoot(signal);
    if (!root) throw DfError.notFound(`image ${src.description} not found`);
    await this.loadReuse();

    const parsed = parseManifestOrIndex(root.bytes, root.mediaType, `${src.description} manifest`);
    const manifests: ConvertSummary['manifests'] = [];
    let out: RootManifest;
    if (parsed.kind === 'manifest') {
      out = await this.convertManifest(root.digest, parsed.manifest, root.mediaType);
      manifests.push({ platform: 'default', digest: out.digest, source: root.digest });
    } else {
      const children: Descriptor[] = [];
      for (const d of parsed.index.manifests) {
        const isAttestation = d.annotations?.['vnd.docker.reference.type'] === 'attestation-manifest';
        if (isAttestation || !platformMatches(d.platform, this.opts.platforms)) continue;
        const bytes = await src.getManifest(d.digest, d.mediaType, signal);
        const child = parseManifestOrIndex(bytes, d.mediaType, `${src.description} manifest ${d.digest}`);
        if (child.kind !== 'manifest')
          throw DfError.unsupported(
            `${src.description}: nested image indexes are not supported (${d.digest})`,
          );
        this.progress.note(`platform ${platformString(d.platform)}`);
        const conv = await this.convertManifest(d.digest, child.manifest, child.mediaType);
        const desc: Descriptor = { mediaType: conv.mediaType, digest: conv.digest, size: conv.bytes.length };
        if (d.platform) desc.platform = d.platform;
        children.push(desc);
        manifests.push({ platform: platformString(d.platform), digest: conv.digest, source: d.digest });
      }
      if (children.length === 0)
        throw DfError.notFound(
          `${src.description}: no image matches --platform ${this.opts.platforms.join(', ')} (available: ${parsed.index.manifests
            .map((m) => platformString(m.platform))
            .join(', ')})`,
        );
      const index: Record<string, unknown> = {
        schemaVersion: 2,
        mediaType: MediaTypes.ociIndex,
        manifests: children,
      };
      if (parsed.index.annotations) index.annotations = parsed.index.annotations;
      const bytes = canonicalJson(index);
      out = { mediaType: MediaTypes.ociIndex, digest: sha256Digest(bytes), bytes };
      await dst.putManifest(bytes, out.mediaType, out.digest, signal);
    }
    // The tag is written last: until here nothing new is visible under the destination name.
    signal?.throwIfAborted();
    await dst.tag(out.bytes, out.mediaType, out.digest, signal);
    await this.saveReuse();

    const layers = this.layers;
    return {
      source: src.description,
      destination: dst.description,
      digest: out.digest,
      mediaType: out.mediaType,
      manifests,
      layers,
      bytesIn: layers.reduce((a, l) => a + l.bytesIn, 0),
      bytesOut: layers.reduce((a, l) => a + (l.reused ? 0 : l.size), 0),
      uncompressedBytes: layers.reduce((a, l) => a + l.uncompressedBytes, 0),
      seconds: (Date.now() - started) / 1000,
    };
  }

  private async loadReuse(): Promise<void> {
    if (this.opts.force) return;
    try {
      this.localIndex = JSON.parse(await readFile(this.indexPath, 'utf8')) as LayerIndex;
    } catch {
      this.localIndex = {};
    }
    for (const [k, d] of Object.entries(this.localIndex)) this.reuse.set(k, d);
    // A destination converted before (maybe on another machine) names its sources in annotations.
    try {
      const prev = await this.opts.dst.resolveRoot(this.opts.signal);
      if (!prev) return;
      const p = parseManifestOrIndex(prev.bytes, prev.mediaType, 'existing destination');
      const manifests: Manifest[] = [];
      if (p.kind === 'manifest') manifests.push(p.manifest);
      else
        for (const d of p.index.manifests) {
          const child = parseManifestOrIndex(
            await this.opts.dst.getManifest(d.digest, d.mediaType, this.opts.signal),
            d.mediaType,
            'existing destination manifest',
          );
          if (child.kind === 'manifest') manifests.push(child.manifest);
        }
      for (const m of manifests)
        for (const l of m.layers) {
          const srcDigest = l.annotations?.[Annotations.sourceDigest];
          const opts = l.annotations?.[Annotations.options];
          if (l.mediaType === DFB_LAYER_MEDIA_TYPE && srcDigest && opts)
            this.reuse.set(`${srcDigest}|${opts}`, l);
        }
    } catch (err) {
      if (err instanceof DfError && err.code === 'ABORTED') throw err;
      this.log.debug({ err }, 'existing destination not usable for incremental conversion');
    }
  }

  private async saveReuse(): Promise<void> {
    const tmp = `${this.indexPath}.tmp-${randomBytes(6).toString('hex')}`;
    try {
      await writeFile(tmp, JSON.stringify(this.localIndex));
      await rename(tmp, this.indexPath);
    } catch (err) {
      await rm(tmp, { force: true });
      this.log.warn({ err }, 'could not save the incremental conversion index');
    }
  }

  private async convertManifest(sourceDigest: string, m: Manifest, mediaType: string): Promise<RootManifest> {
    const { src, dst, signal } = this.opts;
    if (m.layers.some((l) => l.mediaType === DFB_LAYER_MEDIA_TYPE))
      throw DfError.invalidArgument(
        `${src.description} is already a dfnode image (its layers are DFB blobs)`,
      );
    // Fail on unsupported layers before doing any work.
    for (const l of m.layers) layerCompression(l.mediaType);
    // ...and on a work directory that cannot hold the largest layer's DFB blob (about its compressed size or more),
    // plus, with a prefetch list, its spooled file data (uncompressed: about 3× the compressed size)
    const todo = m.layers.filter((l) => !this.converted.has(l.digest));
    await ensureFreeSpace(
      this.opts.workDir,
      Math.max(0, ...todo.map((l) => l.size)) * (this.opts.prefetch?.length ? 4 : 1),
      `converting ${src.description}`,
      'free disk space or point --work-dir at a larger file system',
      this.opts.freeBytes,
    );

    // The config is read first: its diff IDs are checked against the layers' uncompressed contents.
    const cfg = await readAll(await src.openBlob(m.config.digest, m.config.size, signal));
    const actual = sha256Digest(cfg);
    if (actual !== m.config.digest)
      throw DfError.digestMismatch(`${src.description} config`, m.config.digest, actual);
    const diffIds = isImageConfig(m.config.mediaType)
      ? configDiffIds(cfg, m.layers.length, src.description)
      : undefined;

    const layers: Descriptor[] = [];
    for (const [i, l] of m.layers.entries()) {
      let job = this.converted.get(l.digest);
      if (!job) {
        job = this.convertOne(l, `layer ${i + 1}/${m.layers.length}`);
        this.converted.set(l.digest, job);
      }
      const desc = (await job).desc;
      // The snapshotter names snapshots by the config's diff IDs (chain IDs): a layer whose content does not
      // hash to its diff ID would mount under a name that does not describe it (containerd refuses such an
      // image too).
      const got = desc.annotations?.[Annotations.diffId];
      if (diffIds && got && got !== diffIds[i])
        throw DfError.corrupt(
          `${src.description}: layer ${i + 1}/${m.layers.length} (${l.digest}) uncompresses to diff ID ${got}, but the image config says ${diffIds[i]}; the source image is inconsistent`,
        );
      layers.push(desc);
    }

    // Config unchanged: diff IDs still name the uncompressed source layers, so snapshot chain IDs match.
    if (!(await dst.hasBlob(m.config.digest, signal))) {
      await dst.putBlob(m.config.digest, cfg.length, () => bufferStream(cfg), {
        signal,
        mountFrom: this.mountFrom(),
      });
    }

    const annotations: Record<string, string> = { ...(m.annotations ?? {}) };
    annotations['dev.dfnode.source.manifest'] = sourceDigest;
    annotations['dev.dfnode.source.manifest.media-type'] = mediaType;
    const manifest: Record<string, unknown> = {
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: m.config.mediaType, digest: m.config.digest, size: m.config.size },
      layers,
      annotations,
    };
    const bytes = canonicalJson(manifest);
    const digest = sha256Digest(bytes);
    await dst.putManifest(bytes, MediaTypes.ociManifest, digest, signal);
    return { mediaType: MediaTypes.ociManifest, digest, bytes };
  }

  private mountFrom(): string[] | undefined {
    const { src, dst } = this.opts;
    if (
      src.registryHost &&
      src.repository &&
      src.registryHost === dst.registryHost &&
      src.repository !== dst.repository
    )
      return [src.repository];
    return undefined;
  }

  private async convertOne(
    l: Descriptor,
    label: string,
  ): Promise<{ desc: Descriptor; summary: LayerSummary }> {
    const { src, dst, signal } = this.opts;
    const started = Date.now();
    const reuseKey = `${l.digest}|${this.key}`;
    const prev = this.reuse.get(reuseKey);
    if (prev && (await dst.hasBlob(prev.digest, signal))) {
      const summary: LayerSummary = {
        source: l.digest,
        digest: prev.digest,
        size: prev.size,
        reused: true,
        push: 'skipped',
        bytesIn: 0,
        uncompressedBytes: 0,
        files: 0,
        blocks: 0,
        seconds: (Date.now() - started) / 1000,
      };
      this.layers.push(summary);
      this.localIndex[reuseKey] = prev;
      this.progress.layerDone(
        l.digest,
        `${label} ${shortDigest(l.digest)} already converted → ${shortDigest(prev.digest)}`,
      );
      return { desc: prev, summary };
    }

    const id = l.digest;
    this.progress.layerStart(id, `${label} ${shortDigest(l.digest)}`, l.size);
    const tmpOut = join(
      this.opts.workDir,
      'tmp',
      `${l.digest.slice(7, 19)}-${randomBytes(6).toString('hex')}.dfb`,
    );
    let result;
    let attempt = 0;
    for (;;) {
      try {
        const input = await src.openBlob(l.digest, l.size, signal);
        result = await convertLayer(input, l, tmpOut, {
          blockSize: this.opts.blockSize,
          workers: this.opts.workers,
          tmpDir: join(this.opts.workDir, 'tmp'),
          prefetch: this.opts.prefetch,
          signal,
          onBytesIn: (n) => this.progress.layerBytes(id, n),
        });
        break;
      } catch (err) {
        await rm(tmpOut, { force: true });
        const e = await explainLayerFailure(err, l, () => src.openBlob(l.digest, l.size, signal), signal);
        // A connection dropped mid-stream is retried from the start; corrupt input is not.
        if ((e.code === 'NETWORK' || e.code === 'TIMEOUT') && attempt < 2 && !signal?.aborted) {
          attempt++;
          this.log.warn({ layer: l.digest, err: e.message }, 'layer download failed, retrying');
          continue;
        }
        throw e;
      }
    }

    const blob = result.blob;
    const desc: Descriptor = {
      mediaType: DFB_LAYER_MEDIA_TYPE,
      digest: blob.digest,
      size: blob.size,
      annotations: {
        [Annotations.tocDigest]: blob.tocDigest,
        [Annotations.tocOffset]: String(blob.tocOffset),
        [Annotations.blockSize]: String(blob.blockSize),
        [Annotations.sourceDigest]: l.digest,
        [Annotations.sourceMediaType]: l.mediaType,
        [Annotations.sourceSize]: String(l.size),
        [Annotations.diffId]: result.diffId,
        [Annotations.options]: this.key,
        [Annotations.converterVersion]: CONVERTER_VERSION,
      },
    };
    let push: LayerSummary['push'];
    try {
      // The digest was computed here while writing tmpOut: a local store can take the file over as it is.
      push = dst.adoptBlobFile
        ? await dst.adoptBlobFile(desc.digest, desc.size, tmpOut, { signal })
        : await dst.putBlob(
            desc.digest,
            desc.size,
            () => createReadStream(tmpOut, { highWaterMark: 1 << 20 }),
            {
              signal,
            },
          );
    } finally {
      await rm(tmpOut, { force: true });
    }
    const summary: LayerSummary = {
      source: l.digest,
      digest: desc.digest,
      size: desc.size,
      reused: false,
      push,
      bytesIn: result.compressedBytes,
      uncompressedBytes: result.uncompressedBytes,
      files: blob.files,
      blocks: blob.blocks,
      seconds: (Date.now() - started) / 1000,
    };
    this.layers.push(summary);
    this.localIndex[reuseKey] = desc;
    this.progress.layerDone(
      id,
      `${label} ${shortDigest(l.digest)} → ${shortDigest(desc.digest)} ${(result.uncompressedBytes / 1e6).toFixed(1)} MB in, ${(
        blob.size / 1e6
      ).toFixed(1)} MB out, ${summary.seconds.toFixed(1)} s`,
    );
    return { desc, summary };
  }
}

const isImageConfig = (mediaType: string): boolean =>
  mediaType === MediaTypes.ociConfig || mediaType === MediaTypes.dockerConfig;

/**
 * An image config's `rootfs.diff_ids`, one per layer (undefined when it has none). A config whose diff IDs
 * are malformed or do not match the layer count is refused.
 */
function configDiffIds(cfg: Buffer, layers: number, what: string): string[] | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(cfg.toString('utf8'));
  } catch {
    throw DfError.corrupt(`${what}: the image config is not valid JSON`);
  }
  const ids = (parsed as { rootfs?: { diff_ids?: unknown } } | null)?.rootfs?.diff_ids;
  if (ids === undefined) return undefined;
  if (!Array.isArray(ids) || !ids.every((d) => typeof d === 'string'))
    throw DfError.corrupt(`${what}: the image config's rootfs.diff_ids is not a list of digests`);
  if (ids.length !== layers)
    throw DfError.corrupt(
      `${what}: the image config lists ${ids.length} diff IDs for ${layers} layers; the source image is inconsistent`,
    );
  return ids as string[];
}

async function readAll(stream: AsyncIterable<Buffer>): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c);
  return Buffer.concat(chunks);
}
