import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DockerArchiveStore } from '../../converter/store-docker-archive.js';
import { OciLayoutStore } from '../../converter/store-oci.js';
import { sha256Digest } from '../../src/registry/oci.js';
import { buildTar, type TarEntry } from '../fixtures/tar-builder.js';
import { tempDir } from '../helpers/temp.js';

// A docker archive's manifest.json and an OCI layout's index.json are the image author's: the paths and
// digests in them must not reach files of the converting host.
let dir: string;
let cleanup: () => Promise<void>;
const SECRET = '{"host":"secret"}';

beforeEach(async () => {
  ({ dir, cleanup } = await tempDir('dfnode-archive-'));
  // The archive is unpacked under DIR/work/docker-archive-XXXX, so ../secret.json is DIR/work/secret.json
  // and ../../secret.json is DIR/secret.json.
  await mkdir(join(dir, 'work'));
  await writeFile(join(dir, 'secret.json'), SECRET);
  await writeFile(join(dir, 'work', 'secret.json'), SECRET);
});
afterEach(() => cleanup());

const layer = buildTar([{ path: 'hello', type: 'file', data: 'hi' }]);
const configJson = '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}';

async function archive(manifest: unknown, extra: TarEntry[] = []): Promise<string> {
  const file = join(dir, 'image.tar');
  await writeFile(
    file,
    buildTar([
      { path: 'manifest.json', type: 'file', data: JSON.stringify([manifest]) },
      { path: 'config.json', type: 'file', data: configJson },
      { path: 'l1/layer.tar', type: 'file', data: layer },
      ...extra,
    ]),
  );
  return file;
}

async function openArchive(file: string): Promise<DockerArchiveStore> {
  return DockerArchiveStore.open(file, undefined, join(dir, 'work'));
}

describe('docker archive paths', () => {
  it('reads an archive whose duplicate layer is a link inside the archive', async () => {
    const file = await archive({ Config: 'config.json', Layers: ['l1/layer.tar', 'l2/layer.tar'] }, [
      { path: 'l2/layer.tar', type: 'symlink', linkname: '../l1/layer.tar' },
    ]);
    const store = await openArchive(file);
    try {
      expect(await store.hasBlob(sha256Digest(configJson))).toBe(true);
      expect(await store.hasBlob(sha256Digest(layer))).toBe(true);
    } finally {
      await store.close();
    }
  });

  it.each([
    ['a relative path out of the archive', '../secret.json', [], /leaves the archive/],
    ['a deeper one', 'a/../../../secret.json', [], /leaves the archive/],
    ['an absolute path', '/etc/hostname', [], /absolute path/],
    [
      'a symlink pointing out',
      'cfg.json',
      [{ path: 'cfg.json', type: 'symlink', linkname: '../secret.json' }],
      /leaves the archive/,
    ],
    [
      'a symlink to an absolute path',
      'cfg.json',
      [{ path: 'cfg.json', type: 'symlink', linkname: '/etc/hostname' }],
      /link to the absolute path/,
    ],
    [
      'a directory symlink pointing out',
      'up/secret.json',
      [{ path: 'up', type: 'symlink', linkname: '..' }],
      /leaves the archive/,
    ],
    ['a symlink loop', 'x', [{ path: 'x', type: 'symlink', linkname: 'x' }], /loop of links/],
  ] as Array<[string, string, TarEntry[], RegExp]>)(
    'refuses a Config through %s',
    async (_what, config, extra, why) => {
      const file = await archive({ Config: config, Layers: ['l1/layer.tar'] }, extra);
      const err = await openArchive(file).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: 'CORRUPT', message: expect.stringMatching(why) });
      expect((err as Error).message).toMatch(/refusing to read outside the archive/);
    },
  );

  it('refuses a layer path out of the archive', async () => {
    const file = await archive({ Config: 'config.json', Layers: ['../../secret.json'] });
    await expect(openArchive(file)).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/layer "..\/..\/secret.json" leaves the archive/),
    });
  });
});

describe('OCI layout digests', () => {
  it.each(['sha256:../../secret', 'sha256:../../../secret.json', 'sha512:' + 'a'.repeat(128), '../x'])(
    'refuses %s as a path in the layout',
    async (digest) => {
      const store = new OciLayoutStore(join(dir, 'layout'), undefined);
      await expect(store.getManifest(digest, 'x')).rejects.toMatchObject({
        message: expect.stringMatching(/not sha256:<64 hex>/),
      });
      await expect(store.openBlob(digest, 1)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(store.blobReader(digest)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      expect(await store.hasBlob(digest)).toBe(false);
    },
  );

  it('refuses an index.json whose descriptor digest is a path', async () => {
    const layout = join(dir, 'layout');
    await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
    await writeFile(
      join(layout, 'index.json'),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: 'application/vnd.oci.image.manifest.v1+json',
            digest: 'sha256:../../../secret.json',
            size: 17,
          },
        ],
      }),
    );
    await expect(new OciLayoutStore(layout, undefined).resolveRoot()).rejects.toMatchObject({
      code: 'CORRUPT',
      message: expect.stringMatching(/index.json is malformed/),
    });
    expect(await readFile(join(dir, 'secret.json'), 'utf8')).toBe(SECRET);
  });
});
