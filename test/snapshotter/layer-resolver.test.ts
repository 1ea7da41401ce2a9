/**
 * LayerResolver: which Prepare is a remote DFB layer. A manifest handed over by a pull through `dfnode run`
 * (remember) answers the Prepares of its layers without another registry request; other images still ask.
 */
import { describe, expect, it } from 'vitest';
import { DFB_LAYER_MEDIA_TYPE } from '../../src/blob/types.js';
import { Labels } from '../../src/containerd/labels.js';
import type { RegistryClient } from '../../src/registry/client.js';
import type { Descriptor } from '../../src/registry/oci.js';
import { LayerResolver } from '../../src/snapshotter/remote-layers.js';

const digest = (c: string) => `sha256:${c.repeat(64)}`;
const layers: Descriptor[] = [
  { mediaType: DFB_LAYER_MEDIA_TYPE, digest: digest('a'), size: 100 },
  { mediaType: DFB_LAYER_MEDIA_TYPE, digest: digest('b'), size: 200 },
];

function labelsFor(image: string, manifest: string, layer: string): Record<string, string> {
  return {
    [Labels.snapshotRef]: digest('c'),
    [Labels.criImageRef]: image,
    [Labels.criManifestDigest]: manifest,
    [Labels.criLayerDigest]: layer,
  };
}

describe('LayerResolver.remember', () => {
  it('answers from a remembered manifest without asking the registry; unknown manifests still go there', async () => {
    const asked: string[] = [];
    const registry = {
      getManifest: (ref: { toString(): string }) => {
        asked.push(ref.toString());
        return Promise.reject(new Error('registry unreachable in this test'));
      },
    } as unknown as RegistryClient;
    const resolver = new LayerResolver(registry);
    resolver.remember('reg.example:5000/app:1-dfb', digest('d'), layers);

    const r = await resolver.resolve(labelsFor('reg.example:5000/app:1-dfb', digest('d'), digest('b')));
    expect(r).toMatchObject({ ref: 'reg.example:5000/app:1-dfb', digest: digest('b'), size: 200 });
    expect(asked).toEqual([]);

    // another manifest of the same image: fetched (and here it fails)
    await expect(
      resolver.resolve(labelsFor('reg.example:5000/app:1-dfb', digest('e'), digest('b'))),
    ).rejects.toThrow(/unreachable/);
    expect(asked).toHaveLength(1);
    // a bad reference is ignored, not thrown
    expect(() => resolver.remember('Not A Ref!!', digest('d'), layers)).not.toThrow();
  });
});

describe('LayerResolver.onImage', () => {
  it("announces an image's layers once per manifest: from a pull's remember or from a Prepare's fetch", async () => {
    const manifest = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digest('f'), size: 2 },
      layers,
    });
    let fetched = 0;
    const registry = {
      getManifest: () => {
        fetched++;
        return Promise.resolve({
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          digest: digest('e'),
          bytes: Buffer.from(manifest),
        });
      },
    } as unknown as RegistryClient;
    const resolver = new LayerResolver(registry);
    const seen: Array<[string, string[]]> = [];
    resolver.onImage = (image, ls) => seen.push([image, ls.map((l) => l.digest)]);

    // a pull hands over its manifest: announced once, however often it is remembered
    resolver.remember('reg.example:5000/app:1-dfb', digest('d'), layers);
    resolver.remember('reg.example:5000/app:1-dfb', digest('d'), layers);
    await resolver.resolve(labelsFor('reg.example:5000/app:1-dfb', digest('d'), digest('a')));
    expect(seen).toEqual([['reg.example:5000/app:1-dfb', [digest('a'), digest('b')]]]);

    // CRI: the first Prepare of another manifest fetches it and announces it; its next Prepares do not
    await resolver.resolve(labelsFor('reg.example:5000/app:2-dfb', digest('e'), digest('a')));
    await resolver.resolve(labelsFor('reg.example:5000/app:2-dfb', digest('e'), digest('b')));
    expect(fetched).toBe(1);
    expect(seen).toHaveLength(2);
    expect(seen[1]).toEqual(['reg.example:5000/app:2-dfb', [digest('a'), digest('b')]]);

    // a hook that throws does not fail the Prepare
    resolver.onImage = () => {
      throw new Error('hook failed');
    };
    resolver.remember('reg.example:5000/app:3-dfb', digest('d'), layers);
    await expect(
      resolver.resolve(labelsFor('reg.example:5000/app:3-dfb', digest('d'), digest('b'))),
    ).resolves.toMatchObject({ digest: digest('b') });
  });
});
