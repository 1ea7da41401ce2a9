// The layer input's tar buffers are recycled (filled again by the native gunzip, or sent back to the input
// worker of the JavaScript path): a body chunk must stay intact until the onEntry call that got it settles,
// however slowly it is consumed. Both paths: the addon's (NativeInflater) and the worker's.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { describe, expect, it, onTestFinished, vi } from 'vitest';
import { readLayer } from '../../converter/layer-input.js';
import { pseudoRandom } from '../helpers/dfb.js';
import { tempDir } from '../helpers/temp.js';
import { chunkedStream } from '../helpers/layer-input.js';
import { member, tarOf } from './raw-tar.js';

const sha256 = (b: Buffer) => 'sha256:' + createHash('sha256').update(b).digest('hex');

describe('layer input tar buffers', () => {
  // ~45 MB of tar: files spanning several 4 MiB buffers and many small ones between them.
  const files: Array<[string, Buffer]> = [];
  for (let i = 0; i < 120; i++) {
    const size = i % 10 === 0 ? (9 << 20) / 2 + 123 * i : 1000 + 7919 * i;
    files.push([`f${i}`, pseudoRandom(size, i + 1, true)]);
  }
  const tar = tarOf(...files.map(([name, body]) => member('0', name, body)));
  const gz = gzipSync(tar, { level: 1 });

  for (const [what, blob, mediaType, fromFile, js] of [
    ['gzip', gz, 'application/vnd.oci.image.layer.v1.tar+gzip', false, false],
    ['plain tar', tar, 'application/vnd.oci.image.layer.v1.tar', false, false],
    // small chunks are gathered into staging buffers: one handed to the parser must never be refilled
    ['plain tar in small chunks', tar, 'application/vnd.oci.image.layer.v1.tar', false, false],
    ['gzip from a file', gz, 'application/vnd.oci.image.layer.v1.tar+gzip', true, false],
    ['gzip, worker', gz, 'application/vnd.oci.image.layer.v1.tar+gzip', false, true],
    ['plain tar, worker', tar, 'application/vnd.oci.image.layer.v1.tar', false, true],
    // fs read streams yield chunks that own their memory: those are transferred to the worker, not copied
    ['gzip from a file, worker', gz, 'application/vnd.oci.image.layer.v1.tar+gzip', true, true],
  ] as const) {
    it(`never reuses a buffer whose chunks an unfinished onEntry still holds (${what})`, async () => {
      if (js) {
        vi.stubEnv('DFNODE_CONVERT_ADDON', 'none'); // the JavaScript path: the input worker with zlib
        onTestFinished(() => void vi.unstubAllEnvs());
      }
      const tmp = fromFile ? await tempDir() : undefined;
      // Small gzip input chunks: many messages to the worker, each able to carry released buffers back to be
      // refilled while an entry is still being read. A plain tar comes in 4 MiB chunks, so that it fills
      // whole tar buffers (each reply sends what it has).
      const chunk = mediaType.endsWith('gzip') || what.includes('small') ? 64 << 10 : 4 << 20;
      let input: Readable = chunkedStream(blob, chunk);
      if (tmp) {
        onTestFinished(() => tmp.cleanup());
        await writeFile(join(tmp.dir, 'layer'), blob);
        input = createReadStream(join(tmp.dir, 'layer'), { highWaterMark: chunk });
      }
      let bad = 0;
      let checked = 0;
      let seen = 0;
      const res = await readLayer(
        input,
        { mediaType, digest: sha256(blob), size: blob.length },
        async (e) => {
          if (e.header.type !== 'file') return;
          const held: Array<[Buffer, Buffer]> = [];
          for await (const c of e.body) {
            held.push([c, Buffer.from(c)]);
            // A slow consumer: the input worker runs ahead and would fill a released buffer meanwhile.
            await new Promise((r) => setImmediate(r));
          }
          await new Promise((r) => setTimeout(r, 1));
          for (const [view, copy] of held) {
            checked++;
            if (!view.equals(copy)) bad++;
          }
          const whole = Buffer.concat(held.map(([, copy]) => copy));
          expect(whole.equals(files[seen++]![1])).toBe(true);
        },
      );
      expect(seen).toBe(files.length);
      expect(checked).toBeGreaterThan(files.length);
      expect(bad).toBe(0);
      expect(res.uncompressedBytes).toBe(tar.length);
      expect(res.diffId).toBe(sha256(tar));
      // Without reuse every 4 MiB of tar would be a new buffer; with it, a handful circulate.
      const unrecycled = Math.ceil(tar.length / (4 << 20));
      expect(res.tarBuffers).toBeLessThan(unrecycled / 2);
    });
  }
});
