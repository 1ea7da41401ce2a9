/**
 * `dfconvert --optimize SRC DST -- CMD`: converts the Debian fixture, runs CMD against it under
 * `dfnode run --record-reads` in a private containerd (ctr run, runc, kernel FUSE), converts again with the
 * recorded list, and leaves nothing behind. The compiled CLI runs as a child process.
 * Needs root, /dev/fuse, overlayfs, containerd, ctr, runc, docker-registry, debootstrap (fixture).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parsePrefetchList } from '../../src/blob/prefetch-list.js';
import { readMountInfo } from '../../src/fuse/mounts.js';
import { pidsMentioning } from '../../src/process.js';
import { cliPath, runCli } from '../helpers/cli.js';
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

  /** `dfconvert --optimize` of the fixture into oci:TMP/OUT:opt, keeping the list at `list` when given. */
  const optimizeArgs = (seconds: number, out: string, list: string | undefined, cmd: string[]) => [
    '--optimize',
    '--optimize-seconds',
    String(seconds),
    ...(list ? ['--keep-prefetch-list', list] : []),
    '--work-dir',
    join(tmp.dir, 'work'),
    src,
    `oci:${join(tmp.dir, out)}:opt`,
    '--',
    ...cmd,
  ];

  it('records the files the workload reads, in order, and writes an image that verifies', async () => {
    const list = join(tmp.dir, 'reads.jsonl');
    const dst = `oci:${join(tmp.dir, 'out')}:opt`; // what optimizeArgs(…, 'out', …) writes
    const mountsBefore = readMountInfo().length;
    const r = await runCli(
      'dfconvert',
      optimizeArgs(60, 'out', list, [
        '/bin/sh',
        '-c',
        'cat /etc/debian_version >/dev/null; ls /usr/share >/dev/null; cat /usr/bin/tail >/dev/null',
      ]),
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
      optimizeArgs(3, 'out2', list, ['/bin/sh', '-c', 'cat /etc/debian_version >/dev/null; exec sleep 1000']),
      { timeoutMs: 300_000 },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/optimize: workload stopped after 3 s/);
    const paths = parsePrefetchList(await readFile(list, 'utf8')).map((e) => e.path);
    expect(paths).toContain('/etc/debian_version');
    expect(paths).toContain('/usr/bin/sleep');
  });

  it('Ctrl-C during the workload stops and removes everything it started', async () => {
    const scratch = join(tmp.dir, 'tmpdir');
    await mkdir(scratch, { recursive: true });
    const child = spawn(
      process.execPath,
      [cliPath('dfconvert'), ...optimizeArgs(600, 'out3', undefined, ['/bin/sleep', '1789'])],
      {
        env: { ...process.env, TMPDIR: scratch, DFNODE_LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const deadline = Date.now() + 240_000;
      while (!err.includes('optimize: running')) {
        if (child.exitCode !== null) throw new Error(`dfconvert exited early: ${err}`);
        if (Date.now() > deadline) throw new Error(`the workload did not start: ${err}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const work = (await readdir(scratch)).find((n) => n.startsWith('dfopt-'));
      expect(work).toBeDefined();
      child.kill('SIGINT');
      expect(await exit).not.toBe(0);
      // no mounts, no processes mentioning its directory, and the directory is gone
      expect(readMountInfo().filter((m) => m.mountpoint.startsWith(scratch))).toEqual([]);
      // nor the workload (a container left running after its shim was killed)
      expect(pidsMentioning('sleep\u00001789')).toEqual([]);
      expect(pidsMentioning(join(scratch, work!))).toEqual([]);
      expect(await readdir(scratch)).toEqual([]);
      expect(existsSync(join(tmp.dir, 'out3'))).toBe(false);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
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
