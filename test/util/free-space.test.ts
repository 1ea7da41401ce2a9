// Large work is refused up front when its directory cannot hold it: preheat (the cache) and the helper itself.
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import { preheat } from '../../src/layer/preheat.js';
import { DFB_LAYER_MEDIA_TYPE, Annotations } from '../../src/blob/types.js';
import type { RegistryClient } from '../../src/registry/client.js';
import { parseReference } from '../../src/registry/reference.js';
import { ensureFreeSpace, freeBytes } from '../../src/util/free-space.js';
import { storeOverTestBlob } from '../layer/store-setup.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

describe('free space checks', () => {
  it('ensureFreeSpace refuses with NO_SPACE naming the work, the directory and both sizes', async () => {
    await ensureFreeSpace('/d', 100, 'work', 'hint', async () => 100);
    await ensureFreeSpace('/d', 0, 'work', 'hint', async () => 0);
    await expect(
      ensureFreeSpace('/d', 3 * 1024 ** 2, 'preheat of x', 'free some', async () => 1024 ** 2),
    ).rejects.toMatchObject({
      code: 'NO_SPACE',
      message: expect.stringMatching(
        /no space left for preheat of x: it needs about 3\.0 MiB in \/d, which has 1\.0 MiB free: free some/,
      ),
    });
    expect(await freeBytes(tmpdir())).toBeGreaterThan(0);
  });

  it('preheat refuses an image that does not fit in the cache before fetching any block', async () => {
    const { tb, src, store } = await storeOverTestBlob(cleanups);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: tb.blob.digest, size: 2 },
        layers: [
          {
            mediaType: DFB_LAYER_MEDIA_TYPE,
            digest: tb.blob.digest,
            size: tb.blob.size,
            annotations: { [Annotations.tocDigest]: tb.tocDigest },
          },
        ],
      }),
    );
    const client = {
      getManifest: async () => ({
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        digest: 'sha256:' + '1'.repeat(64),
        bytes: manifest,
      }),
    } as unknown as RegistryClient;
    const ref = parseReference('registry.example/app:1-dfb');
    await expect(preheat(store, client, ref, { freeBytes: async () => 1000 })).rejects.toMatchObject({
      code: 'NO_SPACE',
    });
    // the footer and TOC only: no block was fetched
    expect(src.requests.length).toBe(2);
    expect(store.list()).toEqual([]);
    // with room, the same preheat fills the layer
    const r = await preheat(store, client, ref, { freeBytes: async () => 1 << 30 });
    expect(r.layers).toBe(1);
    await r.release();
  });
});
