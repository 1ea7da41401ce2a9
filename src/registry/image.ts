import { Annotations, DFB_LAYER_MEDIA_TYPE } from '../blob/types.js';
import { DfError } from '../errors.js';
import type { RegistryClient } from './client.js';
import { parseManifestOrIndex, platformMatches, platformString, type Descriptor } from './oci.js';
import type { ImageReference } from './reference.js';

/** A DFB layer of a converted image, as its manifest describes it. */
export interface DfbLayer {
  digest: string;
  size: number;
  /** TOC digest from the converter's annotation (checked when the TOC is read). */
  tocDigest: string | undefined;
  /** Uncompressed source layer digest (diff ID). */
  diffId: string | undefined;
  /** TOC offset from the converter's annotation: a hint that saves the footer's own read. */
  tocOffset?: number;
}

/** An image resolved to one platform's manifest. */
export interface ResolvedManifest {
  ref: ImageReference;
  manifestDigest: string;
  configDigest: string;
  /** Bottom layer first, any media type. */
  layers: Descriptor[];
}

export interface ResolvedImage {
  ref: ImageReference;
  manifestDigest: string;
  configDigest: string;
  /** Bottom layer first. */
  layers: DfbLayer[];
}

/** The host's platform in OCI terms. */
export function hostPlatform(): string {
  const arch = {
    x64: 'amd64',
    arm64: 'arm64',
    arm: 'arm',
    ppc64: 'ppc64le',
    s390x: 's390x',
    riscv64: 'riscv64',
  }[process.arch as string];
  return `linux/${arch ?? process.arch}`;
}

/** The DFB description of a layer descriptor (annotations of dfconvert). */
export function dfbLayerOf(d: Descriptor): DfbLayer {
  return {
    digest: d.digest,
    size: d.size,
    tocDigest: d.annotations?.[Annotations.tocDigest],
    diffId: d.annotations?.[Annotations.diffId],
    tocOffset: offsetHint(d.annotations?.[Annotations.tocOffset], d.size),
  };
}

/** A decimal TOC offset inside a blob of `size` bytes, else undefined (the footer is read instead). */
function offsetHint(text: string | undefined, size: number): number | undefined {
  if (text === undefined || !/^\d{1,16}$/.test(text)) return undefined;
  const n = Number(text);
  return Number.isSafeInteger(n) && n < size ? n : undefined;
}

/**
 * The one image resolution of the code base: `ref` (or the manifest `manifestDigest` of its repository) to
 * one platform's manifest, choosing `platform` (default: the host's) from an index.
 */
export async function resolveManifest(
  client: RegistryClient,
  ref: ImageReference,
  opts: { platform?: string; manifestDigest?: string; signal?: AbortSignal } = {},
): Promise<ResolvedManifest> {
  const platform = opts.platform ?? hostPlatform();
  const target = opts.manifestDigest ? ref.withDigest(opts.manifestDigest) : ref;
  let m = await client.getManifest(target, { signal: opts.signal });
  let parsed = parseManifestOrIndex(m.bytes, m.mediaType, `manifest of ${target}`);
  if (parsed.kind === 'index') {
    const want: Descriptor | undefined = parsed.index.manifests.find((d) =>
      platformMatches(d.platform, [platform]),
    );
    if (!want)
      throw DfError.notFound(
        `${ref} has no image for ${platform} (available: ${parsed.index.manifests.map((d) => platformString(d.platform)).join(', ')})`,
      );
    m = await client.getManifest(ref.withDigest(want.digest), { signal: opts.signal });
    parsed = parseManifestOrIndex(m.bytes, m.mediaType, `manifest ${want.digest} of ${ref}`);
    if (parsed.kind !== 'manifest')
      throw DfError.unsupported(`${ref}: nested image indexes are not supported`);
  }
  return {
    ref,
    manifestDigest: m.digest,
    configDigest: parsed.manifest.config.digest,
    layers: parsed.manifest.layers,
  };
}

/** Resolves a converted image to its DFB layers; an image with any other layer is refused. */
export async function resolveDfbImage(
  client: RegistryClient,
  ref: ImageReference,
  opts: { platform?: string; signal?: AbortSignal } = {},
): Promise<ResolvedImage> {
  const r = await resolveManifest(client, ref, opts);
  const notDfb = r.layers.find((l) => l.mediaType !== DFB_LAYER_MEDIA_TYPE);
  if (notDfb)
    throw new DfError(
      'FAILED_PRECONDITION',
      `${ref} is not a dfnode image (layer media type ${notDfb.mediaType}); convert it first: dfconvert ${ref}`,
    );
  return { ...r, layers: r.layers.map(dfbLayerOf) };
}
