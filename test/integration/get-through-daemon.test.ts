/**
 * `dfnode get` on a host where `dfnode run` holds the cache: the get is handed to the daemon over its control
 * socket (found from --state-dir, as on a host) and runs in the process that holds the cache — the fuse
 * manager by default, `dfnode run` itself without it — through that node's P2P tier: the file's pieces land
 * in the daemon's cache, a second get is answered from it, and the CLI writes no cache of its own. A get
 * whose CLI is killed (SIGKILL) while the seed still fetches the file is ended in the daemon, and the rerun
 * resumes from the pieces it verified.
 * Real processes: a counting HTTP origin, `dfnode seed`, `dfnode run`. Needs root and /dev/fuse (dfnode run
 * probes a FUSE mount at start); skips locally with a printed reason.
 */
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { FuseManagerClient, stopFuseManager } from '../../src/fusemanager/client.js';
import { fuseManagerPaths } from '../../src/fusemanager/protocol.js';
import { runCli } from '../helpers/cli.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';
import { startDfnodeRun } from '../helpers/containerd.js';
import { dfnodeProc, startSeedProc } from '../helpers/dfnode-proc.js';
import { sha256Digest, sha256File } from '../helpers/digest.js';
import { startFileOrigin } from '../helpers/file-origin.js';
import { requireNodeMounts, waitFor } from '../helpers/node.js';
import { tempDir } from '../helpers/temp.js';

const req = requireNodeMounts();
const TOKEN = 'get-daemon-token';
const MiB = 1024 * 1024;
const cleanups = cleanupsAfterEach();

interface Result {
  digest: string;
  size: number;
  mode: string;
  bytes: Record<string, number>;
}

async function setup(fuseManager: boolean, chunkDelayMs?: number) {
  const { dir, cleanup } = await tempDir('dfnode-get-daemon-');
  cleanups.push(cleanup);
  const origin = await startFileOrigin({ chunkDelayMs });
  cleanups.push(() => origin.close());
  const data = randomBytes(6 * MiB + 4321);
  origin.put('/files/model.bin', data);
  const seed = await startSeedProc(dir, 'seed', ['--cluster-token', TOKEN], {
    DFNODE_P2P_SEED_ORIGINS: origin.base,
  });
  cleanups.push(() => seed.proc.stop());
  const node = await startDfnodeRun({
    dir: join(dir, 'node'),
    fuseManager,
    env: {
      DFNODE_P2P_SEEDS: seed.addr,
      DFNODE_P2P_CLUSTER_TOKEN: TOKEN,
      DFNODE_P2P_LISTEN: '127.0.0.1:0',
      DFNODE_LOG_LEVEL: 'warn',
    },
  });
  cleanups.push(async () => {
    await node.stop();
    await stopFuseManager(node.stateDir).catch(() => undefined);
  });
  const url = `${origin.base}/files/model.bin`;
  // only the host's state directory: the command finds dfnode run's control socket there
  const args = (out: string) => ['get', url, '-O', join(dir, out), '--state-dir', node.stateDir, '--json'];
  return { dir, origin, data, url, node, args, seed };
}

/** Blob files of the daemon's cache directory (named by digest). */
async function cached(cacheDir: string): Promise<string[]> {
  return (await readdir(cacheDir, { recursive: true })).map(String);
}

describe.skipIf(req.skip)(`dfnode get through dfnode run ${req.reason}`, () => {
  for (const fuseManager of [true, false])
    it(`runs in the process holding the cache (${fuseManager ? 'the fuse manager' : 'dfnode run'}), in its swarm`, async () => {
      const { dir, data, node, args } = await setup(fuseManager);
      const digest = sha256Digest(data);
      const r = await runCli('dfnode', args('a.bin'), { timeoutMs: 120_000 });
      expect(r.code, r.stderr).toBe(0);
      const a = JSON.parse(r.stdout) as Result;
      expect(a).toMatchObject({ digest, size: data.length, mode: 'p2p' });
      expect(a.bytes.seed).toBe(data.length);
      expect(`sha256:${await sha256File(join(dir, 'a.bin'))}`).toBe(digest);
      // the pieces are in the daemon's cache: a second get of the file is answered from there
      expect((await cached(node.cacheDir)).some((f) => f.includes(digest.slice(7)))).toBe(true);
      const again = JSON.parse((await runCli('dfnode', args('b.bin'))).stdout) as Result;
      expect(again.bytes.cache).toBe(data.length);
      expect(again.bytes.seed ?? 0).toBe(0);
      expect(`sha256:${await sha256File(join(dir, 'b.bin'))}`).toBe(digest);
      // the command opened no cache of its own (the default one would be under the state directory's host)
      expect((await readdir(dir)).filter((f) => f.startsWith('cache'))).toEqual([]);
    }, 180_000);

  it('a get whose command is killed ends in the daemon; the rerun resumes from the pieces it verified', async () => {
    // a slow origin (64 KiB per 60 ms, about 1 MiB/s) and --digest: the seed serves each piece as it
    // arrives, and the node is killed while the seed still fetches the file (its table still filling)
    const { dir, data, args, origin, node } = await setup(true, 60);
    const digest = sha256Digest(data);
    const withDigest = (out: string) => [...args(out), '--digest', digest];
    const proc = dfnodeProc(withDigest('k.bin'));
    const fm = new FuseManagerClient(fuseManagerPaths(node.stateDir).socket);
    const held = async () => (await fm.status()).blobs.find((b) => b.digest === digest)?.filledBytes ?? 0;
    await waitFor("2 MiB in the daemon's cache", async () => (await held()) >= 2 * MiB, 60_000);
    proc.child.kill('SIGKILL');
    await proc.exited;
    const before = await held();
    const r = await runCli('dfnode', withDigest('k.bin'), { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout) as Result;
    console.log(`rerun after the kill (${before} B held): ${r.stdout.trim()}`);
    // what the killed get had verified is used, and it did not go on to the end after the kill
    expect(res.bytes.cache).toBeGreaterThanOrEqual(2 * MiB);
    expect(res.bytes.cache).toBeLessThan(data.length);
    expect(`sha256:${await sha256File(join(dir, 'k.bin'))}`).toBe(digest);
    expect(origin.served()).toBeLessThanOrEqual(data.length);
  }, 180_000);
});
