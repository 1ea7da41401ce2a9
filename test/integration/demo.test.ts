/**
 * `npm run demo` (the compiled dist/src/cli/demo.js, as a child process): builds, converts, mounts, then runs a
 * container from the lazily pulled converted image under a private containerd + runc with dfnode's
 * snapshotter, its blocks through an embedded seed, then pulls the unconverted image through the node's
 * registry mirror (its blobs through the seed) and runs it; leaves nothing mounted or running, also after
 * Ctrl-C.
 * Needs root, /dev/fuse, overlayfs, containerd, ctr, runc, docker-registry and busybox-static.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMountInfo } from '../../src/fuse/mounts.js';
import { pidsMentioning } from '../../src/process.js';
import { cliPath, runCli } from '../helpers/cli.js';
import { containerdConditions } from '../helpers/containerd.js';
import { requireConditions } from '../helpers/require.js';
import { tempDir } from '../helpers/temp.js';

const req = requireConditions({
  ...containerdConditions(['docker-registry']),
  '/bin/busybox (busybox-static)': existsSync('/bin/busybox'),
});

/** KiB in a demo line's `N KiB <what>`. */
function kibOf(line: string, what: string): number {
  const m = new RegExp(`([\\d.]+) KiB ${what}`).exec(line);
  if (!m) throw new Error(`no "N KiB ${what}" in ${JSON.stringify(line)}`);
  return Number(m[1]);
}

describe.skipIf(req.skip)('npm run demo', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };

  beforeAll(async () => {
    tmp = await tempDir('dfdemo-test-');
  });

  afterAll(async () => {
    await tmp?.cleanup();
  });

  /** Nothing of a demo run under `dir` is left: mounts, processes, files. */
  async function expectNothingLeft(dir: string): Promise<void> {
    expect(readMountInfo().filter((m) => m.mountpoint.startsWith(dir))).toEqual([]);
    // containerd, its shims, dfnode run and ctr all name a path below the demo's directory
    expect(pidsMentioning(dir)).toEqual([]);
    expect(await readdir(dir)).toEqual([]);
  }

  it('runs a container from the lazily pulled image, its blocks through the seed, one from the unconverted image through the mirror, and cleans up', async () => {
    const dir = join(tmp.dir, 'ok');
    await mkdir(dir);
    const r = await runCli('demo', [], { env: { DFNODE_DEMO_DIR: dir }, timeoutMs: 300_000 });
    expect(r.code, r.stdout + r.stderr).toBe(0);
    const lines = r.stdout.split('\n');
    const ran = lines.findIndex((l) => l.startsWith('12. ctr run --snapshotter dfnode'));
    expect(ran, r.stdout).toBeGreaterThan(0);
    expect(lines[ran]).toMatch(/exit 0/);
    // the container's output, printed by the demo after the run line (the image's command: cat /app/hello.txt)
    expect(lines[ran + 1]).toBe('      | Hello from a lazily loaded dfnode image!');
    expect(lines[ran - 1]).toMatch(/^11\. dfnode pull .*\/demo\/app:1\.0-dfb: /);
    const read = lines.find((l) => l.startsWith('13. the run read'));
    expect(read, r.stdout).toBeDefined();
    // every block the container read came through the seed, none from the registry directly
    expect(kibOf(read!, 'through the seed')).toBeGreaterThan(0);
    expect(kibOf(read!, 'from the registry directly')).toBe(0);
    expect(kibOf(read!, 'of blocks')).toBe(kibOf(read!, 'through the seed'));
    // lazily: the run read only part of the image (its 8 MiB of bulk data is never read)
    const share = /= ([\d.]+)% of the/.exec(read!);
    expect(Number(share?.[1])).toBeGreaterThan(0);
    expect(Number(share?.[1])).toBeLessThan(50);
    // the unconverted image through the node's registry mirror (hosts.toml), its blobs through the seed
    expect(r.stdout).toMatch(/^14\. registry mirror of dfnode run on 127\.0\.0\.1:\d+; .*hosts\.toml/m);
    const pulled = lines.find((l) => l.startsWith('15. ctr images pull --hosts-dir'));
    expect(pulled, r.stdout).toMatch(/\/demo\/app:1\.0 \(the unconverted image/);
    const ran2 = lines.findIndex((l) => l.startsWith('16. ctr run (the unconverted image'));
    expect(ran2, r.stdout).toBeGreaterThan(0);
    expect(lines[ran2]).toMatch(/exit 0/);
    expect(lines[ran2 + 1]).toBe('      | Hello from a lazily loaded dfnode image!');
    const via = lines.find((l) => l.startsWith('17. the mirror sent containerd'));
    expect(via, r.stdout).toBeDefined();
    // every layer byte of the image passed the mirror (hosts.toml names the registry as fallback too; the
    // config is the converted image's, already in containerd's content store), and its pieces all came
    // through the seed: none from the registry directly, none from peers (there are none)
    const sent = kibOf(via!, 'of blobs');
    expect(sent).toBeGreaterThanOrEqual(kibOf(pulled!, 'of layers'));
    expect(kibOf(via!, 'through the seed')).toBe(sent);
    expect(kibOf(via!, 'from the registry directly')).toBe(0);
    expect(kibOf(via!, 'from peers')).toBe(0);
    // the node's mirror asked the seed for the manifests (the seed fetched them from the registry)
    const m = /(\d+) of its (\d+) manifest answers came from the seed/.exec(via!);
    expect(m, via).not.toBeNull();
    expect(Number(m![1])).toBeGreaterThanOrEqual(1);
    expect(r.stdout).toMatch(/^18\. stopped containerd, dfnode run and the seed; nothing left mounted$/m);
    expect(r.stdout).toMatch(/^demo OK in [\d.]+ s$/m);
    await expectNothingLeft(dir);
  });

  // SIGINT to the demo alone (a script's kill), or to its process group as a terminal's Ctrl-C sends it (then
  // containerd, dfnode run and ctr get it too); once dfnode run and containerd are up (before or during the
  // lazy pull), or once the mirror part starts (during ctr's pull through the mirror)
  it.each([
    ['the demo process (lazy pull)', false, /^10\. dfnode run/m, 'int'],
    ['its process group (lazy pull)', true, /^10\. dfnode run/m, 'int-group'],
    ['its process group (pull through the mirror)', true, /^14\. registry mirror/m, 'int-mirror'],
  ])('SIGINT to %s stops and removes everything it started', async (_, group, at, name) => {
    const dir = join(tmp.dir, name);
    await mkdir(dir);
    const child = spawn(process.execPath, [cliPath('demo')], {
      env: { ...process.env, DFNODE_DEMO_DIR: dir, DFNODE_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: group,
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exit = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const deadline = Date.now() + 240_000;
      while (!at.test(out)) {
        if (child.exitCode !== null) throw new Error(`the demo exited early: ${out}\n${err}`);
        if (Date.now() > deadline)
          throw new Error(`the demo did not reach the container part: ${out}\n${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(pidsMentioning(dir).length).toBeGreaterThan(0);
      process.kill(group ? -child.pid! : child.pid!, 'SIGINT');
      expect(await exit).not.toBe(0);
      expect(err).toMatch(/dfnode demo: error: interrupted/);
      expect(err).not.toMatch(/tagged/); // dfconvert's wording
      expect(err).toMatch(/stopped and removed what the demo had started/);
      expect(out).not.toMatch(/demo OK/);
      await expectNothingLeft(dir);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });

  it('without containerd and runc: one clear error naming what is missing, before any work', async () => {
    const dir = join(tmp.dir, 'missing');
    await mkdir(dir);
    const r = await runCli('demo', [], {
      env: { DFNODE_DEMO_DIR: dir, PATH: join(tmp.dir, 'no-such-bin') },
      timeoutMs: 60_000,
    });
    expect(r.code).not.toBe(0);
    expect(r.code).not.toBe(70); // not an internal error
    expect(r.stderr).toMatch(
      /^dfnode demo: error: the demo runs a container .*needs: .*containerd in PATH, ctr in PATH, runc in PATH.*bash \.ci\/install/m,
    );
    expect(r.stderr).not.toMatch(/^\s+at /m); // no stack trace
    expect(r.stdout).toBe('');
    expect(await readdir(dir)).toEqual([]);
  });
});
