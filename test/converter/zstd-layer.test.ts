// zstd layers (application/vnd.oci.image.layer.v1.tar+zstd) through the converter's input: libzstd in the
// native addon (native/convert_decode.c), against the same tar as gzip. The zstd CLI (a Debian package) makes
// the test data, as `zstd` and skopeo's --dest-compress-format zstd would.
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ensureNativeAddon } from '../../native/build-addon.js';
import { convertLayer } from '../../converter/convert-layer.js';
import { readLayer } from '../../converter/layer-input.js';
import { convertAddon } from '../../src/blob/native-codec.js';
import { buildTar, sha256, type TarEntry } from '../fixtures/tar-builder.js';
import { pseudoRandom } from '../helpers/dfb.js';
import { rejection } from '../helpers/errors.js';
import { requireTools } from '../helpers/require.js';
import { tempDir } from '../helpers/temp.js';
import { chunkedStream, decodeInPieces, readSlowly, withoutAddon } from '../helpers/layer-input.js';

const ZSTD = 'application/vnd.oci.image.layer.v1.tar+zstd';
const GZIP = 'application/vnd.oci.image.layer.v1.tar+gzip';
const req = requireTools(['zstd']);

/** `data` through the zstd CLI (stdin to stdout: the frame does not declare its size). */
function zstd(data: Buffer, args: string[] = []): Buffer {
  const r = spawnSync('zstd', ['-c', '-q', ...args], { input: data, maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`zstd ${args.join(' ')} failed: ${r.stderr.toString()}`);
  return r.stdout;
}

/** A skippable frame (RFC 8878 §3.1.2): magic 0x184D2A5?, a 4-byte length, that many bytes. */
function skippable(payload: Buffer): Buffer {
  const h = Buffer.alloc(8);
  h.writeUInt32LE(0x184d2a53, 0);
  h.writeUInt32LE(payload.length, 4);
  return Buffer.concat([h, payload]);
}

function entries(): TarEntry[] {
  const e: TarEntry[] = [{ path: 'd/', type: 'directory' }];
  for (let i = 0; i < 24; i++)
    e.push({
      path: `d/f${i}`,
      type: 'file',
      data: pseudoRandom([0, 1, 4095, 70_000, 300_000][i % 5]!, i, i % 2 === 0),
    });
  e.push({ path: 'd/link', type: 'symlink', linkname: 'f1' });
  return e;
}

/** Every entry's name, size and content digest, and the diff ID, of a layer blob. */
async function readAll(blob: Buffer, mediaType = ZSTD): Promise<{ list: string[]; diffId: string }> {
  const list: string[] = [];
  const r = await readLayer(
    chunkedStream(blob, 100_003),
    { mediaType, digest: sha256(blob), size: blob.length },
    async (e) => {
      let bytes = 0;
      const h: Buffer[] = [];
      for await (const c of e.body) {
        bytes += c.length;
        h.push(Buffer.from(c));
      }
      list.push(`${e.header.name} ${e.header.type} ${bytes} ${sha256(Buffer.concat(h))}`);
    },
  );
  return { list, diffId: r.diffId };
}

describe.skipIf(req.skip)('zstd layers', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  const tar = buildTar(entries());

  beforeAll(async () => {
    expect(ensureNativeAddon(), 'the native addons build (npm run build:native)').toBeUndefined();
    ({ dir, cleanup } = await tempDir('dfnode-zstd-'));
  });
  afterAll(async () => cleanup?.());

  it('reads a zstd layer as the same entries and diff ID as its gzip twin, and converts it to the same DFB blob', async () => {
    const gz = gzipSync(tar);
    const zs = zstd(tar, ['-3']);
    const a = await readAll(gz, GZIP);
    const b = await readAll(zs);
    expect(b.list).toEqual(a.list);
    expect(b.diffId).toBe(sha256(tar));
    const out = async (blob: Buffer, mediaType: string, name: string) => {
      const file = join(dir, name);
      await convertLayer(
        chunkedStream(blob, 100_003),
        { mediaType, digest: sha256(blob), size: blob.length },
        file,
        {
          blockSize: 64 * 1024,
          workers: 2,
          tmpDir: dir,
        },
      );
      return readFile(file);
    };
    expect((await out(zs, ZSTD, 'z.dfb')).equals(await out(gz, GZIP, 'g.dfb'))).toBe(true);
  });

  it('reads concatenated frames and skips skippable frames', async () => {
    const cut = 512 * 30;
    const blob = Buffer.concat([
      zstd(tar.subarray(0, cut)),
      skippable(Buffer.from('metadata a decoder skips')),
      zstd(tar.subarray(cut), ['-19']),
    ]);
    const r = await readAll(blob);
    expect(r.diffId).toBe(sha256(tar));
    expect(r.list).toEqual((await readAll(zstd(tar))).list);
  });

  it('decodes in pieces of any size on the thread pool, one call at a time per handle', async () => {
    const native = convertAddon()!;
    const blob = zstd(tar);
    for (const [inStep, outSize] of [
      [997, 4096],
      [blob.length, 100_000],
    ] as const) {
      const r = await decodeInPieces(native, 'zstd', blob, inStep, outSize);
      expect(r.finished).toBe(true);
      expect(r.finishedEarly, 'finished before the last byte').toBe(false);
      expect(r.overlapRefused).toBe(true);
      expect(r.out.equals(tar), `in ${inStep}, out ${outSize}`).toBe(true);
    }
    expect(() => native.decoder('bzip2' as 'zstd')).toThrow(/decoder\(kind/);
  });

  it('refuses corrupt, truncated and trailing-garbage zstd as damaged, and a huge window as unsupported', async () => {
    const blob = zstd(tar);
    const corrupt = Buffer.from(blob);
    corrupt[corrupt.length - 1]! ^= 0xff; // the frame's content checksum (the zstd CLI writes one)
    const truncated = blob.subarray(0, blob.length - 100);
    const trailing = Buffer.concat([blob, Buffer.from('not a zstd frame')]);
    for (const [bad, pattern] of [
      [corrupt, /corrupt zstd data \(Restored data doesn't match checksum\)/],
      [truncated, /corrupt zstd data \(unexpected end of file\)/],
      [trailing, /corrupt zstd data \(Unknown frame descriptor\)/],
    ] as const) {
      const e = await rejection(readAll(bad));
      expect(e.code).toBe('CORRUPT');
      expect(e.message).toMatch(pattern);
    }
    // from stdin with --long=30 the frame declares a 1 GiB window: refused before any memory is taken
    const huge = await rejection(readAll(zstd(tar, ['--long=30'])));
    expect(huge.code).toBe('UNSUPPORTED');
    expect(huge.message).toMatch(/window is larger than 128 MiB/);
  });

  it('without the native addon, refuses a zstd layer clearly before reading it', async () => {
    const blob = zstd(tar);
    let read = false;
    const input = new Readable({
      read() {
        read = true;
        this.push(null);
      },
    });
    const e = await withoutAddon(true, () =>
      rejection(
        readLayer(input, { mediaType: ZSTD, digest: sha256(blob), size: blob.length }, async () => {}),
      ),
    );
    expect(e.code).toBe('UNSUPPORTED');
    expect(e.message).toMatch(/zstd-compressed: reading zstd needs dfnode's native converter addon/);
    expect(read).toBe(false);
  });

  it('bounds its tar buffers when a small zstd input decodes to hundreds of MB (a zstd bomb)', async () => {
    const size = 384 << 20;
    const bomb = zstd(buildTar([{ path: 'zeros', type: 'file', data: Buffer.alloc(size) }]), ['-19']);
    expect(bomb.length).toBeLessThan(1 << 20);
    // a parser slower than the decoder
    const { seen, tarBuffers } = await readSlowly(bomb, ZSTD);
    expect(seen).toBe(size);
    expect(tarBuffers).toBeLessThanOrEqual(8);
  }, 90_000);
});
