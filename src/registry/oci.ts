import { createHash } from 'node:crypto';
import { z } from 'zod';
import { DfError } from '../errors.js';
import { isIndexMediaType, MediaTypes } from './media-types.js';

/** OCI and Docker manifests and indexes: shapes, parsing of untrusted JSON, platforms, layer compression. */
export { MediaTypes };

export type LayerCompression = 'gzip' | 'zstd' | 'none';

/** How a layer's bytes are compressed, or a clear error for anything dfconvert cannot read. */
export function layerCompression(mediaType: string): LayerCompression {
  switch (mediaType) {
    case MediaTypes.ociLayerGzip:
    case MediaTypes.ociLayerNdGzip:
    case MediaTypes.dockerLayerGzip:
    case MediaTypes.dockerForeignGzip:
      return 'gzip';
    case MediaTypes.ociLayerZstd:
    case MediaTypes.ociLayerNdZstd:
      return 'zstd';
    case MediaTypes.ociLayerTar:
    case MediaTypes.ociLayerNdTar:
    case MediaTypes.dockerLayerTar:
      return 'none';
  }
  throw DfError.unsupported(
    `unknown layer media type ${mediaType}: dfconvert reads gzip, zstd and uncompressed tar layers`,
  );
}

const descriptorSchema = z.object({
  mediaType: z.string(),
  digest: z.string().regex(/^sha256:[0-9a-f]{64}$/, 'digest must be sha256:<64 hex>'),
  size: z.number().int().nonnegative(),
  annotations: z.record(z.string(), z.string()).optional(),
  urls: z.array(z.string()).optional(),
  platform: z
    .object({
      architecture: z.string(),
      os: z.string(),
      variant: z.string().optional(),
      'os.version': z.string().optional(),
      'os.features': z.array(z.string()).optional(),
    })
    .optional(),
});
export type Descriptor = z.infer<typeof descriptorSchema>;

const manifestSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  artifactType: z.string().optional(),
  config: descriptorSchema,
  layers: z.array(descriptorSchema),
  subject: descriptorSchema.optional(),
  annotations: z.record(z.string(), z.string()).optional(),
});
export type Manifest = z.infer<typeof manifestSchema>;

export const indexSchema = z.object({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(descriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
});
export type ImageIndex = z.infer<typeof indexSchema>;

function isManifestMediaType(mt: string | undefined): boolean {
  return mt === MediaTypes.ociManifest || mt === MediaTypes.dockerManifest;
}

export function sha256Digest(buf: Buffer | string): string {
  return 'sha256:' + createHash('sha256').update(buf).digest('hex');
}

function parseJson(bytes: Buffer, what: string): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (err) {
    throw DfError.corrupt(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

function check<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const r = schema.safeParse(value);
  if (!r.success) {
    const msg = r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; ');
    throw DfError.corrupt(`${what} is malformed: ${msg}`);
  }
  return r.data;
}

/** Parses a manifest or index; `mediaType` is the transport's (Content-Type or descriptor) when the JSON has none. */
export function parseManifestOrIndex(
  bytes: Buffer,
  mediaType: string | undefined,
  what: string,
):
  | { kind: 'index'; mediaType: string; index: ImageIndex }
  | { kind: 'manifest'; mediaType: string; manifest: Manifest } {
  const json = parseJson(bytes, what) as Record<string, unknown>;
  const mt =
    (typeof json?.mediaType === 'string' ? json.mediaType : undefined) ??
    mediaType ??
    (Array.isArray(json?.manifests) ? MediaTypes.ociIndex : MediaTypes.ociManifest);
  if (isIndexMediaType(mt) || (!isManifestMediaType(mt) && Array.isArray(json?.manifests)))
    return { kind: 'index', mediaType: mt, index: check(indexSchema, json, what) };
  if (isManifestMediaType(mt) || json?.config)
    return { kind: 'manifest', mediaType: mt, manifest: check(manifestSchema, json, what) };
  throw DfError.unsupported(`${what} has unsupported media type ${mt}`);
}

/** Serializes JSON deterministically (keys in insertion order as built; no whitespace differences). */
export function canonicalJson(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

export function platformString(p: Descriptor['platform']): string {
  if (!p) return 'unknown';
  return [p.os, p.architecture, p.variant].filter(Boolean).join('/');
}

/** Matches a descriptor platform against `os/arch[/variant]` filters (empty filter list matches everything). */
export function platformMatches(p: Descriptor['platform'], filters: string[]): boolean {
  if (filters.length === 0) return true;
  if (!p) return false;
  return filters.some((f) => {
    const [os, arch, variant] = f.split('/');
    return p.os === os && p.architecture === arch && (variant === undefined || p.variant === variant);
  });
}
