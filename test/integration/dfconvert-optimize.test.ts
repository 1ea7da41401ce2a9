/**
 * `dfconvert --optimize SRC DST -- CMD`: converts the Debian fixture, runs CMD against it under
 * `dfnode run --record-reads` in a private containerd (ctr run, runc, kernel FUSE), converts again with the
 * recorded list, and leaves nothing behind. The compiled CLI runs as a child process.
 * Needs root, /dev/fuse, overlayfs, containerd, ctr, runc, docker-registry, debootstrap (fixture).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePrefetchList } from '../../src/blob/prefetch-list.js';
import { readMountInfo } from '../../src/fuse/mounts.js';
import { runCli } from '../helpers/cli.js';
import { requireContainerd } from '../helpers/containerd.js';
import { ensureFixture } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/temp.js';

const req = requireContainerd(['debootstrap']);

describe.skipIf(req.skip)('dfconvert --optimize (debian)', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let src: string;

  beforeAll(async () => {
    tmp = await tempDir('dfopt-test-');
    src = (await ensureFixture('debian')).ref;
  });

  afterAll(async () => {
    await tmp?.cleanup();
  });

  it('records the files the workload reads, in order, and writes an image that verifies', async () => {
    const list = join(tmp.dir, 'reads.jsonl');
    const dst = `oci:${join(tmp.dir, 'out')}:opt`;
    const mountsBefore = readMountInfo().length;
    const r = await runCli(
      'dfconvert',
      [
        '--optimize',
        '--optimize-seconds',
        '60',
        '--keep-prefetch-list',
        list,
        '--work-dir',
        join(tmp.dir, 'work'),
        src,
        dst,
        '--',
        '/bin/sh',
        '-c',
        'cat /etc/debian_version >/dev/null; ls /usr/share >/dev/null; cat /usr/bin/tail >/dev/null',
      ],
      { timeoutMs: 300_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/optimize: workload exited \(0\)/);
    expect(r.stderr).toMatch(/optimize: recorded \d+ files/);
    const entries = parsePrefetchList(await readFile(list, 'utf8'));
    const paths = entries.map((e) => e.path);
    // the shell and its loader first, then the files in the order the commands read them
    const order = ['/usr/bin/dash', '/etc/debian_version', '/usr/bin/ls', '/usr/bin/tail'];
    for (const p of order) expect(paths, p).toContain(p);
    const at = order.map((p) => paths.indexOf(p));
    expect([...at].sort((a, b) => a - b)).toEqual(at);
    // cat read /usr/bin/tail whole: one range, the whole file
    const tail = entries.find((e) => e.path === '/usr/bin/tail')!;
    expect(tail.ranges?.length).toBe(1);
    expect(tail.ranges![0]![0]).toBe(0);
    // nothing left mounted, and the image is the source's tree
    expect(readMountInfo().filter((m) => m.mountpoint.includes('/dfopt-')).length).toBe(0);
    expect(readMountInfo().length).toBeLessThanOrEqual(mountsBefore);
    const v = await runCli('dfconvert', ['verify', src, dst], { timeoutMs: 300_000 });
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/^OK: 1 layers/);
  });

  it('stops a workload that outlives --optimize-seconds and still records what it read', async () => {
    const list = join(tmp.dir, 'reads-2.jsonl');
    const r = await runCli(
      'dfconvert',
      [
        '--optimize',
        '--optimize-seconds',
        '3',
        '--keep-prefetch-list',
        list,
        '--work-dir',
        join(tmp.dir, 'work'),
        src,
        `oci:${join(tmp.dir, 'out2')}:opt`,
        '--',
        '/bin/sh',
        '-c',
        'cat /etc/debian_version >/dev/null; exec sleep 1000',
      ],
      { timeoutMs: 300_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/optimize: workload stopped after 3 s/);
    const paths = parsePrefetchList(await readFile(list, 'utf8')).map((e) => e.path);
    expect(paths).toContain('/etc/debian_version');
    expect(paths).toContain('/usr/bin/sleep');
  });

  it('without the tools it needs: an error saying what is missing', async () => {
    const r = await runCli('dfconvert', ['--optimize', src, `oci:${join(tmp.dir, 'x')}:1`, '--', 'true'], {
      env: { PATH: join(tmp.dir, 'no-such-bin') },
    });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/--optimize .*needs: .*containerd in PATH, ctr in PATH, runc in PATH/);
  });

  it('says what is missing without a workload, and rejects a bad --optimize-seconds', async () => {
    const a = await runCli('dfconvert', ['--optimize', src, `oci:${join(tmp.dir, 'x')}:1`]);
    expect(a.code).not.toBe(0);
    expect(a.stderr).toMatch(/--optimize needs the workload after --/);
    const b = await runCli('dfconvert', [
      '--optimize',
      '--optimize-seconds',
      '0',
      src,
      `oci:${join(tmp.dir, 'x')}:1`,
      '--',
      'true',
    ]);
    expect(b.code).not.toBe(0);
    expect(b.stderr).toMatch(/--optimize-seconds must be > 0/);
  });
});
