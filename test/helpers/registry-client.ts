/** Helpers of the registry client's integration tests (registry.test.ts, registry-auth.test.ts) and image manifests for tests. */
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { expect } from 'vitest';
import { DfError } from '../../src/errors.js';
import { RegistryClient, type RegistryClientOptions } from '../../src/registry/client.js';
import { MediaTypes } from '../../src/registry/media-types.js';
import { parseReference } from '../../src/registry/reference.js';
import { sha256Digest } from './digest.js';

export const sha = sha256Digest;
export function blob(n: number): { data: Buffer; digest: string } {
  const data = randomBytes(n);
  return { data, digest: sha256Digest(data) };
}

export async function collect(r: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of r) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

export async function catchErr(p: Promise<unknown>): Promise<DfError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(DfError);
    return err as DfError;
  }
  throw new Error('expected a rejection');
}

export function client(o: RegistryClientOptions = {}): RegistryClient {
  return new RegistryClient({ plainHttp: true, retryBaseMs: 5, retryMaxMs: 20, timeoutMs: 10_000, ...o });
}

/** Pushes a config + one layer and an OCI/Docker manifest under `tag`; returns the manifest bytes. */
export async function pushImage(c: RegistryClient, host: string, repo: string, tag: string, docker = false) {
  const ref = parseReference(`${host}/${repo}:${tag}`);
  const config = Buffer.from(
    JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }),
  );
  const layer = blob(3000);
  await c.pushBlob(ref, sha(config), config.length, () => Readable.from([config]));
  await c.pushBlob(ref, layer.digest, layer.data.length, () => Readable.from([layer.data]));
  const manifest = {
    schemaVersion: 2,
    mediaType: docker ? MediaTypes.dockerManifest : MediaTypes.ociManifest,
    config: {
      mediaType: docker ? MediaTypes.dockerConfig : MediaTypes.ociConfig,
      digest: sha(config),
      size: config.length,
    },
    layers: [
      {
        mediaType: docker ? MediaTypes.dockerLayerGzip : MediaTypes.ociLayerGzip,
        digest: layer.digest,
        size: layer.data.length,
      },
    ],
  };
  const bytes = Buffer.from(JSON.stringify(manifest));
  const mediaType = docker ? MediaTypes.dockerManifest : MediaTypes.ociManifest;
  const digest = await c.putManifest(ref, bytes, mediaType);
  return { ref, bytes, digest, mediaType, layer };
}

/**
 * The bytes of an OCI image manifest naming `config` and uncompressed tar `layers` (digest and size each), as
 * a registry stores it.
 */
export function ociManifest(
  config: { digest: string; size: number },
  layers: { digest: string; size: number }[] = [],
): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.ociManifest,
      config: { mediaType: MediaTypes.ociConfig, ...config },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', ...l })),
    }),
  );
}
