import { Annotations, DFB_LAYER_MEDIA_TYPE } from '../blob/types.js';
import { DfError } from '../errors.js';
import type { RegistryClient } from '../registry/client.js';
import { parseManifestOrIndex, platformMatches, platformString, type Descriptor } from '../registry/oci.js';
import type { ImageReference } from '../registry/reference.js';

export interface DfbLayer {
  digest: string;
  size: number;
  tocDigest: string | undefined;
  /** Uncompressed source layer digest (diff ID). */
  diffId: string | undefined;
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

/** Resolves a converted image to its DFB layers (choosing the host's platform from an index). */
export async function resolveDfbImage(
  client: RegistryClient,
  ref: ImageReference,
  opts: { platform?: string; signal?: AbortSignal } = {},
): Promise<ResolvedImage> {
  const platform = opts.platform ?? hostPlatform();
  let m = await client.getManifest(ref, { signal: opts.signal });
  let parsed = parseManifestOrIndex(m.bytes, m.mediaType, `manifest of ${ref}`);
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
  const manifest = parsed.manifest;
  const notDfb = manifest.layers.filter((l) => l.mediaType !== DFB_LAYER_MEDIA_TYPE);
  if (notDfb.length)
    throw new DfError(
      'FAILED_PRECONDITION',
      `${ref} is not a dfnode image (layer media type ${notDfb[0]!.mediaType}); convert it first: dfconvert ${ref}`,
    );
  return {
    ref,
    manifestDigest: m.digest,
    configDigest: manifest.config.digest,
    layers: manifest.layers.map((l) => ({
      digest: l.digest,
      size: l.size,
      tocDigest: l.annotations?.[Annotations.tocDigest],
      diffId: l.annotations?.[Annotations.diffId],
    })),
  };
}
