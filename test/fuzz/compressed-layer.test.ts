// A layer blob is the image author's: whatever its gzip bytes, readLayer returns or throws a DfError on both
// input paths — the native one (ISA-L's gunzip and the hashes on libuv's pool, in C) and the JavaScript one
// (zlib on a worker thread) — and the two agree: the same entries and diff ID, or both refuse. zstd (native
// path only: libzstd) is held against the zstd CLI: what it decodes, readLayer hashes to the same diff ID
// (or refuses the tar inside); what it refuses, readLayer refuses. The digest in the descriptor is the
// mutated blob's, so the bytes reach the decoder (a wrong digest is checked last).
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import fc from 'fast-check';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { readLayer } from '../../converter/layer-input.js';
import { convertAddon } from '../../src/blob/native-codec.js';
import { DfError } from '../../src/errors.js';
import { buildTar, sha256 } from '../fixtures/tar-builder.js';
import { pseudoRandom } from '../helpers/dfb.js';
import { chunkedStream } from '../helpers/layer-input.js';
import { applyMutations, mutations, params, returnsOrDfError, timeoutFor } from './fuzz.js';

const GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
const ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';
const hasZstd = spawnSync('zstd', ['--version']).status === 0;

const tar = buildTar([
  { path: 'etc/', type: 'directory' },
  { path: 'etc/os-release', type: 'file', data: 'ID=fuzz\n'.repeat(40) },
  { path: 'bin/tool', type: 'file', data: pseudoRandom(150_000, 3, true) },
  { path: 'bin/link', type: 'symlink', linkname: 'tool' },
  { path: 'var/blob', type: 'file', data: pseudoRandom(70_000, 4, false) },
]);
const blob = gzipSync(tar);

/**
 * `of` with up to 6 mutations, half the time cut at the first one, and the chunk size it is read in.
 */
const damaged = (of: Buffer) =>
  fc
    .tuple(mutations(of.length, 6), fc.constantFrom(97, 4096, 1 << 20), fc.boolean())
    .map(([ms, chunk, cut]) => {
      const bad = applyMutations(of, ms);
      return { bad: cut ? bad.subarray(0, Math.max(1, ms[0]!.at)) : bad, chunk };
    });

/** Entries (name, type, size, content digest) and the diff ID, or the error's code. */
async function outcome(bytes: Buffer, chunk: number, js: boolean, mediaType = GZIP): Promise<string> {
  if (js) vi.stubEnv('DFNODE_CONVERT_ADDON', 'none');
  else vi.unstubAllEnvs();
  const entries: string[] = [];
  const r = await returnsOrDfError(() =>
    readLayer(
      chunkedStream(bytes, chunk),
      { mediaType, digest: sha256(bytes), size: bytes.length },
      async ({ header, body }) => {
        const h = createHash('sha256');
        for await (const c of body) h.update(c);
        entries.push(`${header.name} ${header.type} ${header.size} ${h.digest('hex').slice(0, 12)}`);
      },
    ),
  );
  if (r instanceof DfError) return `error ${r.code}`;
  return [...entries, r.diffId, String(r.uncompressedBytes)].join('\n');
}

describe('compressed layer input (fuzz)', () => {
  afterEach(() => void vi.unstubAllEnvs());

  it('loads the native addon (otherwise both sides below would be the JavaScript path)', () => {
    expect(convertAddon()).not.toBeNull();
  });

  it(
    'mutated gzip: both paths return the same entries or both refuse with a DfError',
    async () => {
      await fc.assert(
        fc.asyncProperty(damaged(blob), async ({ bad, chunk }) => {
          const native = await outcome(bad, chunk, false);
          const js = await outcome(bad, chunk, true);
          expect(native).toBe(js);
        }),
        params(0.3),
      );
    },
    timeoutFor(0.3, 400),
  );

  it.skipIf(!hasZstd)(
    'mutated zstd: the native path decodes what the zstd CLI decodes, and refuses what it refuses',
    async () => {
      const zblob = spawnSync('zstd', ['-c', '-q'], { input: tar }).stdout;
      await fc.assert(
        fc.asyncProperty(damaged(zblob), async ({ bad, chunk }) => {
          const got = await outcome(bad, chunk, false, ZSTD);
          const cli = spawnSync('zstd', ['-d', '-c', '-q'], { input: bad, maxBuffer: 64 << 20 });
          if (cli.status !== 0) expect(got).toMatch(/^error /);
          // the CLI's bytes may not be a tar (readLayer refuses it then); if it is one, the same tar
          else if (!got.startsWith('error ')) expect(got.split('\n').at(-2)).toBe(sha256(cli.stdout));
        }),
        params(0.3),
      );
    },
    timeoutFor(0.3, 400),
  );
});
