import fc from 'fast-check';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DockerArchiveStore } from '../../converter/store-docker-archive.js';
import { OciLayoutStore } from '../../converter/store-oci.js';
import { DfError } from '../../src/errors.js';
import { MediaTypes, sha256Digest } from '../../src/registry/oci.js';
import { buildTar, type TarEntry } from '../fixtures/tar-builder.js';
import { tempDir } from '../helpers/temp.js';
import { params, returnsOrDfError, timeoutFor } from './fuzz.js';

// A docker archive's manifest.json and an OCI layout's index.json are the image author's: whatever they
// say, opening the image either works with every blob inside the archive or layout, or fails with a DfError.

let dir: string;
let cleanup: () => Promise<void>;
beforeAll(async () => {
  ({ dir, cleanup } = await tempDir('dfnode-fuzz-json-'));
  await writeFile(join(dir, 'outside.json'), '{"outside":true}');
});
afterAll(() => cleanup());

const pathish = fc.oneof(
  fc.constantFrom(
    'config.json',
    'l1/layer.tar',
    'link',
    'dirlink/layer.tar',
    '../outside.json',
    '../../outside.json',
    '/etc/hostname',
    '.',
    '',
    'l1/../config.json',
    'l1//layer.tar',
    './config.json',
    'loop',
    'l1',
  ),
  fc.string({ maxLength: 12 }),
);
const archiveManifest = fc.oneof(
  fc.array(
    fc.record(
      {
        Config: fc.oneof(pathish, fc.jsonValue()),
        RepoTags: fc.oneof(
          fc.array(fc.string({ maxLength: 8 }), { maxLength: 2 }),
          fc.constant(null),
          fc.jsonValue(),
        ),
        Layers: fc.oneof(fc.array(pathish, { maxLength: 4 }), fc.jsonValue()),
      },
      { requiredKeys: ['Config', 'Layers'] },
    ),
    { maxLength: 2 },
  ),
  fc.jsonValue(),
);
const extraMembers: TarEntry[] = [
  { path: 'link', type: 'symlink', linkname: 'l1/layer.tar' },
  { path: 'dirlink', type: 'symlink', linkname: 'l1' },
  { path: 'outlink', type: 'symlink', linkname: '../outside.json' },
  { path: 'loop', type: 'symlink', linkname: 'loop' },
  { path: 'hard', type: 'link', linkname: 'config.json' },
];

let n = 0;

describe('fuzz: docker archive manifest.json', () => {
  it(
    'opens with every blob inside the archive, or fails with a DfError',
    async () => {
      const work = join(dir, 'work');
      await mkdir(work, { recursive: true });
      await fc.assert(
        fc.asyncProperty(archiveManifest, fc.subarray(extraMembers), async (manifest, extra) => {
          const file = join(dir, `a${n++}.tar`);
          await writeFile(
            file,
            buildTar([
              { path: 'manifest.json', type: 'file', data: JSON.stringify(manifest) ?? '' },
              { path: 'config.json', type: 'file', data: '{}' },
              {
                path: 'l1/layer.tar',
                type: 'file',
                data: buildTar([{ path: 'f', type: 'file', data: 'x' }]),
              },
              ...extra,
            ]),
          );
          const store = await returnsOrDfError(() => DockerArchiveStore.open(file, undefined, work));
          if (store instanceof DfError) return;
          try {
            const root = (await store.resolveRoot())!;
            const m = JSON.parse(root.bytes.toString()) as {
              config: { digest: string };
              layers: { digest: string }[];
            };
            for (const d of [m.config, ...m.layers]) {
              const r = await store.blobReader(d.digest);
              try {
                // Every blob is one of the archive's own files (none is outside.json).
                expect(sha256Digest(await r.read(0, r.size ?? 0))).not.toBe(sha256Digest('{"outside":true}'));
              } finally {
                await r.close?.();
              }
            }
          } finally {
            await store.close();
          }
        }),
        params(0.2),
      );
    },
    timeoutFor(0.2, 100),
  );
});

describe('fuzz: OCI layout index.json', () => {
  it(
    'resolves to a manifest inside the layout, or fails with a DfError',
    async () => {
      const layout = join(dir, 'layout');
      await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
      const manifest = Buffer.from('{"schemaVersion":2}');
      const digest = sha256Digest(manifest);
      await writeFile(join(layout, 'blobs', 'sha256', digest.slice(7)), manifest);
      const desc = fc.record(
        {
          mediaType: fc.oneof(fc.constant(MediaTypes.ociManifest), fc.string({ maxLength: 6 })),
          digest: fc.oneof(
            fc.constantFrom(digest, 'sha256:../../outside.json', 'sha256:' + '0'.repeat(64)),
            fc.string({ maxLength: 10 }),
          ),
          size: fc.oneof(fc.constant(manifest.length), fc.integer()),
          annotations: fc.dictionary(
            fc.constantFrom('org.opencontainers.image.ref.name', 'x'),
            fc.oneof(fc.constantFrom('latest', 'v1'), fc.string({ maxLength: 4 })),
          ),
        },
        { requiredKeys: [] },
      );
      const index = fc.oneof(
        fc.record(
          {
            schemaVersion: fc.oneof(fc.constant(2), fc.jsonValue()),
            manifests: fc.oneof(fc.array(desc, { maxLength: 3 }), fc.jsonValue()),
            annotations: fc.jsonValue(),
          },
          { requiredKeys: [] },
        ),
        fc.jsonValue(),
      );
      await fc.assert(
        fc.asyncProperty(
          fc.oneof(
            index.map((j) => JSON.stringify(j) ?? ''),
            fc.string({ maxLength: 30 }),
          ),
          fc.option(fc.constantFrom('latest', 'v1')),
          async (text, tag) => {
            await writeFile(join(layout, 'index.json'), text);
            const root = await returnsOrDfError(() =>
              new OciLayoutStore(layout, tag ?? undefined).resolveRoot(),
            );
            if (root instanceof DfError || root === undefined) return;
            expect(root.digest).toBe(digest);
          },
        ),
        params(0.5),
      );
    },
    timeoutFor(0.5, 50),
  );
});
