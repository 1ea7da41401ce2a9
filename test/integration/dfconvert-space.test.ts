/**
 * dfconvert and a work directory without room: it refuses up front when the directory cannot hold a layer's
 * DFB blob (a real 256 KiB tmpfs and the busybox fixture, a ~1 MiB gzip layer), and a disk that fills up
 * during the conversion (2 MiB, the multilayer fixture) fails clearly and leaves no partial output. Needs
 * root (mount) and umoci.
 */
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectCleanFailure, runCli, runOk } from '../helpers/cli.js';
import { ensureFixture, fixtureUnavailable } from '../helpers/fixtures.js';
import { requireConditions } from '../helpers/require.js';
import { tempDir } from '../helpers/temp.js';

const req = requireConditions({
  'root (tmpfs mount)': process.getuid?.() === 0,
  'busybox fixture buildable': !fixtureUnavailable('busybox'),
  'multilayer fixture buildable': !fixtureUnavailable('multilayer'),
});

describe.skipIf(req.skip)('dfconvert and a full work directory', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let small = '';
  beforeAll(async () => {
    tmp = await tempDir('dfnode-convert-space-');
    small = join(tmp.dir, 'small');
    await mkdir(small);
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', small]);
  });
  afterAll(async () => {
    if (small) await runOk('umount', [small]).catch(() => undefined);
    await tmp?.cleanup();
  });

  it('says how much the conversion needs and how much is free, before converting anything', async () => {
    const fx = await ensureFixture('busybox');
    const r = await runCli('dfconvert', [
      '--quiet',
      '--work-dir',
      small,
      fx.ref,
      `oci:${join(tmp.dir, 'out')}:dfb`,
    ]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/needs about [\d.]+ MiB in .*small, which has 0\.\d MiB free/);
    expect(r.stderr).toMatch(/--work-dir/);
  });

  it('reports a full disk clearly and leaves no partial output', async () => {
    const tiny = join(tmp.dir, 'tiny');
    await mkdir(tiny, { recursive: true });
    await runOk('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', tiny]);
    try {
      const r = await runCli('dfconvert', [
        '--quiet',
        '--force',
        '--work-dir',
        join(tiny, 'work'),
        (await ensureFixture('multilayer')).ref,
        `oci:${join(tmp.dir, 'nospace-out')}:dfb`,
      ]);
      expectCleanFailure(r, /no space left/i);
      expect(r.code).toBe(9);
      const left = await readdir(join(tiny, 'work', 'tmp')).catch(() => []);
      expect(left).toEqual([]);
    } finally {
      await runOk('umount', [tiny]);
    }
  });
});
