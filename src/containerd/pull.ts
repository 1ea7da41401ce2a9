import * as grpc from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { DFB_LAYER_MEDIA_TYPE } from '../blob/types.js';
import { hostPlatform } from '../registry/image.js';
import { DfError } from '../errors.js';
import type { RegistryClient } from '../registry/client.js';
import { parseManifestOrIndex, platformMatches, platformString, type Descriptor } from '../registry/oci.js';
import { DOCKER_HUB_REGISTRY, type ImageReference } from '../registry/reference.js';
import { chainIds } from './chain-id.js';
import { grpcCode, type ContainerdClient } from './client.js';
import { writeContent } from './content-store.js';
import { Labels, layersLabel } from './labels.js';

export interface LazyPullOptions {
  registry: RegistryClient;
  containerd: ContainerdClient;
  /** Snapshotter name in containerd's config (`[proxy_plugins.<name>]`). */
  snapshotter: string;
  /** `os/arch[/variant]`; default: this host. */
  platform?: string;
  /** How long the pull's lease protects half-pulled content from containerd's GC. */
  leaseTtlMs?: number;
  signal?: AbortSignal;
  onProgress?: (line: string) => void;
  /**
   * Called once the manifest is known (a DFB image), before the config is fetched and before any layer is
   * prepared: a caller that also serves the snapshotter (`dfnode run`) starts the per-layer work of every layer
   * there, concurrently, while the layers are prepared one by one (each on its parent, as containerd
   * requires).
   */
  onResolved?: (image: { name: string; manifestDigest: string; layers: Descriptor[] }) => void;
}

export interface LazyPullResult {
  /** Image name in containerd (what `ctr run` takes). */
  name: string;
  target: { media_type: string; digest: string; size: number };
  manifestDigest: string;
  configDigest: string;
  chainIds: string[];
  /** Layers the snapshotter already had (Stat found the chain ID). */
  existing: number;
}

const MAX_CONFIG_BYTES = 8 * 1024 * 1024;

/** The image name containerd and ctr use for a reference (`docker.io/library/x:tag` for Docker Hub). */
export function containerdImageName(ref: ImageReference): string {
  return ref.registry === DOCKER_HUB_REGISTRY
    ? ref.toString().replace(DOCKER_HUB_REGISTRY, 'docker.io')
    : ref.toString();
}

function snapshotterHint(snapshotter: string): string {
  return (
    `containerd has no snapshotter "${snapshotter}": add to its config (then restart containerd)\n` +
    `  [proxy_plugins.${snapshotter}]\n    type = "snapshot"\n    address = "/run/dfnode/snapshotter.sock"\n` +
    `(see deploy/containerd-config.toml), and start dfnode run`
  );
}

/**
 * Pulls a converted image into containerd without downloading its layers: index/manifest and config go
 * into containerd's content store, each layer is prepared through containerd's snapshots service with the
 * labels containerd's unpacker and CRI set, so the dfnode snapshotter mounts it lazily and answers
 * ALREADY_EXISTS; then the image record is created. Everything is written under a lease that is deleted at
 * the end (the image record and the content labels keep it alive from then on).
 */
export async function lazyPull(ref: ImageReference, opts: LazyPullOptions): Promise<LazyPullResult> {
  const { containerd: ctd, signal } = opts;
  const progress = opts.onProgress ?? (() => undefined);
  const name = containerdImageName(ref);

  await ctd.checkSocket();

  // The lease while the registry answers: containerd's first call also opens the connection.
  const leasing = createLease(ctd, opts.leaseTtlMs, signal);
  leasing.catch(() => undefined); // awaited below; a failure must not go unhandled meanwhile
  let resolved: ResolvedImage;
  try {
    resolved = await resolveImage(ref, name, opts, progress);
  } catch (err) {
    // the registry failed: the lease (if containerd made one) is not left to expire, also when this is a
    // CLI that exits right after
    await leasing.then(
      (id) => deleteLease(ctd, id),
      () => undefined,
    );
    throw err;
  }
  const lease = await leasing;
  try {
    return await intoContainerd(resolved, name, lease, opts, progress);
  } finally {
    await deleteLease(ctd, lease);
  }
}

/** Ends a pull's lease (its failure is not the pull's: the lease expires by its gc label anyway). */
function deleteLease(ctd: ContainerdClient, id: string): Promise<unknown> {
  return ctd.call(ctd.leases, 'Delete', { id, sync: false }).catch(() => undefined);
}

interface ResolvedImage {
  index?: { digest: string; mediaType: string; bytes: Buffer; manifestIndex: number };
  manifest: { digest: string; mediaType: string; bytes: Buffer };
  m: { config: Descriptor; layers: Descriptor[] };
  configBytes: Buffer;
  chains: string[];
}

async function createLease(
  ctd: ContainerdClient,
  ttlMs: number | undefined,
  signal?: AbortSignal,
): Promise<string> {
  const expires = new Date(Date.now() + (ttlMs ?? 3600_000)).toISOString().replace(/\.\d+Z$/, 'Z');
  try {
    const r = await ctd.call<{ lease: { id: string } }>(
      ctd.leases,
      'Create',
      {
        id: `dfnode-pull-${Date.now()}-${randomBytes(4).toString('hex')}`,
        labels: { [Labels.gcExpire]: expires },
      },
      { signal },
    );
    return r.lease.id;
  } catch (err) {
    if (grpcCode(err) === grpc.status.UNAVAILABLE)
      throw new DfError('NETWORK', `cannot reach containerd at ${ctd.address}: ${(err as Error).message}`, {
        cause: err,
      });
    throw err;
  }
}

/** Registry: index → manifest → config, checked to be a DFB image. */
async function resolveImage(
  ref: ImageReference,
  name: string,
  opts: LazyPullOptions,
  progress: (line: string) => void,
): Promise<ResolvedImage> {
  const { registry, snapshotter, signal } = opts;
  const platform = opts.platform ?? hostPlatform();
  const top = await registry.getManifest(ref, { signal });
  let parsed = parseManifestOrIndex(top.bytes, top.mediaType, `manifest of ${ref}`);
  let index: { digest: string; mediaType: string; bytes: Buffer; manifestIndex: number } | undefined;
  let manifest = top;
  if (parsed.kind === 'index') {
    const i = parsed.index.manifests.findIndex((d: Descriptor) => platformMatches(d.platform, [platform]));
    if (i < 0)
      throw DfError.notFound(
        `${ref} has no image for ${platform} (available: ${parsed.index.manifests.map((d) => platformString(d.platform)).join(', ')})`,
      );
    index = { digest: top.digest, mediaType: top.mediaType, bytes: top.bytes, manifestIndex: i };
    manifest = await registry.getManifest(ref.withDigest(parsed.index.manifests[i]!.digest), { signal });
    parsed = parseManifestOrIndex(
      manifest.bytes,
      manifest.mediaType,
      `manifest ${manifest.digest} of ${ref}`,
    );
    if (parsed.kind !== 'manifest')
      throw DfError.unsupported(`${ref}: nested image indexes are not supported`);
  }
  const m = parsed.manifest;
  const notDfb = m.layers.find((l) => l.mediaType !== DFB_LAYER_MEDIA_TYPE);
  if (notDfb)
    throw new DfError(
      'FAILED_PRECONDITION',
      `${ref} is not a dfnode image (layer ${notDfb.digest} has media type ${notDfb.mediaType}). ` +
        `Convert it (dfconvert ${ref}) and pull the -dfb tag, or let containerd unpack it into dfnode's ` +
        `ordinary snapshots: ctr images pull --snapshotter ${snapshotter} ${name}`,
    );
  // the snapshotter's side starts each layer's TOC now, while the config and containerd answer
  opts.onResolved?.({ name, manifestDigest: manifest.digest, layers: m.layers });
  const { stream } = await registry.getBlob(ref, m.config.digest, { signal });
  const configBytes = await readAll(stream, MAX_CONFIG_BYTES, `config of ${ref}`);
  let diffIds: string[];
  try {
    diffIds =
      (JSON.parse(configBytes.toString('utf8')) as { rootfs?: { diff_ids?: string[] } }).rootfs?.diff_ids ??
      [];
  } catch {
    throw DfError.corrupt(`config ${m.config.digest} of ${ref} is not JSON`);
  }
  if (diffIds.length !== m.layers.length)
    throw DfError.corrupt(`config of ${ref} lists ${diffIds.length} diff IDs for ${m.layers.length} layers`);
  const chains = chainIds(diffIds);
  const topChain = chains.at(-1);
  if (topChain === undefined)
    throw DfError.unsupported(`${ref} has no layers: there is nothing to pull lazily`);
  progress(`resolved ${name}: manifest ${manifest.digest}, ${m.layers.length} layers`);
  return { index, manifest, m, configBytes, chains };
}

/**
 * containerd: config, manifest and index into the content store while the layers are prepared bottom up
 * (each on its parent chain), then the image record.
 */
async function intoContainerd(
  r: ResolvedImage,
  name: string,
  lease: string,
  opts: LazyPullOptions,
  progress: (line: string) => void,
): Promise<LazyPullResult> {
  const { containerd: ctd, snapshotter, signal } = opts;
  const { index, manifest, m, configBytes, chains } = r;
  const topChain = chains.at(-1)!;
  const call = { lease, signal };
  // Content (children before parents, as containerd's fetcher does) alongside the layers.
  const content = (async () => {
    await writeContent(ctd, m.config.digest, configBytes, {
      ...call,
      ref: `config-${m.config.digest}`,
      labels: { [`${Labels.gcRefSnapshot}.${snapshotter}`]: topChain },
    });
    const manifestLabels: Record<string, string> = { [`${Labels.gcRefContent}.config`]: m.config.digest };
    m.layers.forEach((l, i) => (manifestLabels[`${Labels.gcRefContent}.l.${i}`] = l.digest));
    await writeContent(ctd, manifest.digest, manifest.bytes, {
      ...call,
      ref: `manifest-${manifest.digest}`,
      labels: manifestLabels,
    });
    if (index)
      await writeContent(ctd, index.digest, index.bytes, {
        ...call,
        ref: `index-${index.digest}`,
        labels: { [`${Labels.gcRefContent}.m.${index.manifestIndex}`]: manifest.digest },
      });
  })();
  let existing: number;
  try {
    existing = await prepareLayers(r, name, call, opts, progress);
  } finally {
    await content.catch(() => undefined);
  }
  await content;

  // The image record: the root that keeps content and snapshots alive once the lease is gone.
  const target = index
    ? { media_type: index.mediaType, digest: index.digest, size: index.bytes.length }
    : { media_type: manifest.mediaType, digest: manifest.digest, size: manifest.bytes.length };
  const image = { name, target, labels: {} };
  try {
    await ctd.call(ctd.images, 'Create', { image }, call);
  } catch (err) {
    if (grpcCode(err) !== grpc.status.ALREADY_EXISTS) throw err;
    await ctd.call(ctd.images, 'Update', { image, update_mask: { paths: ['target'] } }, call);
  }
  progress(`image ${name} ready (snapshotter ${snapshotter})`);
  return {
    name,
    target,
    manifestDigest: manifest.digest,
    configDigest: m.config.digest,
    chainIds: chains,
    existing,
  };
}

/** Each layer bottom up on its parent chain, through containerd's snapshots service; the number present. */
async function prepareLayers(
  r: ResolvedImage,
  name: string,
  call: { lease: string; signal?: AbortSignal },
  opts: LazyPullOptions,
  progress: (line: string) => void,
): Promise<number> {
  const { containerd: ctd, snapshotter } = opts;
  const { manifest, m, chains } = r;
  const digests = m.layers.map((l) => l.digest);
  let existing = 0;
  // which layers are there already: asked for all at once, not one round trip before each Prepare
  const present = m.layers.map((_, i) => snapshotExists(ctd, snapshotter, chains[i]!, call));
  for (const p of present) p.catch(() => undefined); // awaited in order below
  // each remote snapshot is checked to exist while the next layer is prepared
  const checks: Array<Promise<void>> = [];
  try {
    for (const [i, layer] of m.layers.entries())
      if (await prepareOne(i, layer, await present[i]!)) existing++;
  } finally {
    await Promise.allSettled(checks);
  }
  await Promise.all(checks);
  return existing;

  /** Layer i on its parent chain; true when it was present already. */
  async function prepareOne(i: number, layer: Descriptor, isPresent: boolean): Promise<boolean> {
    const chain = chains[i]!;
    const parent = i > 0 ? chains[i - 1]! : '';
    if (isPresent) {
      progress(
        `layer ${i + 1}/${m.layers.length} ${layer.digest.slice(0, 19)}: present (${chain.slice(0, 19)})`,
      );
      return true;
    }
    const key = `extract-${Date.now()}-${randomBytes(6).toString('base64url')} ${chain}`;
    const labels = {
      [Labels.snapshotRef]: chain,
      [Labels.criImageRef]: name,
      [Labels.criManifestDigest]: manifest.digest,
      [Labels.criLayerDigest]: layer.digest,
      [Labels.criImageLayers]: layersLabel(Labels.criImageLayers, digests.slice(i)),
    };
    let mounts: unknown[] | undefined;
    try {
      const res = await ctd.call<{ mounts: unknown[] }>(
        ctd.snapshots,
        'Prepare',
        { snapshotter, key, parent, labels },
        call,
      );
      mounts = res.mounts;
    } catch (err) {
      if (grpcCode(err) !== grpc.status.ALREADY_EXISTS)
        throw explainSnapshotError(err, snapshotter, layer.digest);
    }
    if (mounts) {
      await ctd.call(ctd.snapshots, 'Remove', { snapshotter, key }, call).catch(() => undefined);
      throw new DfError(
        'FAILED_PRECONDITION',
        `snapshotter ${snapshotter} did not take layer ${layer.digest} as a remote layer (it returned mounts to ` +
          `unpack into): is the snapshotter dfnode's, and can it read the registry (--plain-http, credentials)?`,
      );
    }
    checks.push(
      snapshotExists(ctd, snapshotter, chain, call).then((ok) => {
        if (!ok)
          throw DfError.internal(
            `snapshotter ${snapshotter} answered ALREADY_EXISTS for layer ${layer.digest} but has no snapshot ${chain}`,
          );
      }),
    );
    progress(
      `layer ${i + 1}/${m.layers.length} ${layer.digest.slice(0, 19)}: remote snapshot ${chain.slice(0, 19)}`,
    );
    return false;
  }
}

async function readAll(stream: AsyncIterable<Buffer>, limit: number, what: string): Promise<Buffer> {
  const parts: Buffer[] = [];
  let n = 0;
  for await (const c of stream) {
    n += c.length;
    if (n > limit) throw DfError.corrupt(`${what} is larger than ${limit} bytes`);
    parts.push(c);
  }
  return Buffer.concat(parts, n);
}

async function snapshotExists(
  ctd: ContainerdClient,
  snapshotter: string,
  key: string,
  call: { lease?: string; signal?: AbortSignal },
): Promise<boolean> {
  try {
    await ctd.call(ctd.snapshots, 'Stat', { snapshotter, key }, call);
    return true;
  } catch (err) {
    if (grpcCode(err) === grpc.status.NOT_FOUND) return false;
    throw explainSnapshotError(err, snapshotter);
  }
}

function explainSnapshotError(err: unknown, snapshotter: string, layer?: string): DfError {
  const e = DfError.from(err);
  const msg = e.message;
  if (/snapshotter not loaded|no such snapshotter/i.test(msg))
    return new DfError('FAILED_PRECONDITION', snapshotterHint(snapshotter), { cause: err });
  if (grpcCode(err) === grpc.status.UNAVAILABLE || /connection error|dial unix|connect: /i.test(msg))
    return new DfError(
      'NETWORK',
      `containerd cannot reach the ${snapshotter} snapshotter (${msg}): is dfnode run serving the socket named in ` +
        `containerd's [proxy_plugins.${snapshotter}] address?`,
      { cause: err },
    );
  return layer ? new DfError(e.code, `layer ${layer}: ${msg}`, { cause: err, details: e.details }) : e;
}
