/**
 * The control socket's `get` (src/daemon/control-get.ts) over a real unix socket with the CLI's client: its
 * arguments are checked before anything runs (absolute output path, a sha256 digest, bounded headers, no
 * unknown keys), a daemon without a cache yet refuses, progress lines carry the get's size and bytes, and
 * DaemonGets runs the gets of one file one after the other, straight from the origin when the node has no
 * P2P tier.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CacheManager } from '../../src/cache/cache-manager.js';
import { callControl } from '../../src/cli/control-client.js';
import { loadConfig } from '../../src/config.js';
import { DaemonGets, getControlCommand, type Getter } from '../../src/daemon/control-get.js';
import { ControlServer } from '../../src/daemon/control-server.js';
import { silentLogger } from '../../src/log.js';
import type { GetFileResult } from '../../src/mirror/file-get.js';
import { RegistryClient } from '../../src/registry/client.js';
import { sha256Digest } from '../helpers/digest.js';
import { startFileOrigin } from '../helpers/file-origin.js';
import { tempDir } from '../helpers/temp.js';

describe('control socket: get', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let server: ControlServer;
  let path: string;
  const hooks: { get?: Getter } = {};

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir('dfget-ctl-'));
    path = join(dir, 'control.sock');
    server = new ControlServer(path, { logger: silentLogger });
    server.register('get', getControlCommand(hooks));
    await server.listen();
  });
  afterEach(async () => {
    delete hooks.get;
    await server.stop();
    await cleanup();
  });

  const call = (args: unknown, onProgress?: (l: string) => void) =>
    callControl(path, 'get', args as Record<string, unknown>, {
      signal: AbortSignal.timeout(10_000),
      onProgress,
    });

  it('checks the arguments before anything runs, and refuses while the daemon has no cache', async () => {
    let ran = 0;
    hooks.get = () => {
      ran++;
      return Promise.reject(new Error('not here'));
    };
    for (const bad of [
      { what: 'http://o/f', out: 'relative/out.bin' },
      { what: 'http://o/f', out: '/abs/out.bin', digest: 'md5:abc' },
      { what: 'http://o/f', out: '/abs/out.bin', headers: Array.from({ length: 65 }, () => 'K: v') },
      { what: 'http://o/f', out: '/abs/out.bin', extra: 1 },
      { what: '', out: '/abs/out.bin' },
    ])
      await expect(call(bad)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    expect(ran).toBe(0);
    delete hooks.get;
    await expect(call({ what: 'http://o/f', out: '/abs/out.bin' })).rejects.toMatchObject({
      code: 'FAILED_PRECONDITION',
    });
  });

  it('sends progress lines with the size and bytes held, then the result', async () => {
    const result = { digest: 'sha256:x', size: 10, mode: 'p2p', bytes: { seed: 10 } } as GetFileResult;
    hooks.get = async (_args, _signal, progress) => {
      progress({ size: 10, done: 0 });
      await new Promise((r) => setTimeout(r, 300));
      progress({ size: 10, done: 10 });
      return result;
    };
    const lines: string[] = [];
    expect(await call({ what: 'http://o/f', out: '/abs/out.bin' }, (l) => lines.push(l))).toEqual(result);
    expect(lines.map((l) => JSON.parse(l))).toEqual([
      { get: { size: 10, done: 0 } },
      { get: { size: 10, done: 10 } },
    ]);
  });
});

describe('DaemonGets', () => {
  it('runs the gets of one file one after the other, from the origin without a P2P tier', async () => {
    const { dir, cleanup } = await tempDir('dfget-daemon-');
    const origin = await startFileOrigin({ chunkDelayMs: 5 });
    const data = randomBytes(512 * 1024);
    origin.put('/f.bin', data);
    const cfg = loadConfig({ env: {}, flags: { cache: { dir: join(dir, 'cache') } } });
    const caches = CacheManager.fromConfig(cfg.cache, { logger: silentLogger });
    const client = new RegistryClient({});
    try {
      await caches.init();
      const gets = new DaemonGets({ config: cfg, client, caches });
      const order: string[] = [];
      const one = (name: string) =>
        gets
          .get({ what: `${origin.base}/f.bin`, out: join(dir, name) }, AbortSignal.timeout(20_000), (p) => {
            if (p.done === 0 && !order.includes(`${name} start`)) order.push(`${name} start`);
          })
          .then((r) => {
            order.push(`${name} done`);
            return r;
          });
      const [a, b] = await Promise.all([one('a.bin'), one('b.bin')]);
      expect(order).toEqual(['a.bin start', 'a.bin done', 'b.bin start', 'b.bin done']);
      for (const [r, name] of [
        [a, 'a.bin'],
        [b, 'b.bin'],
      ] as const) {
        expect(r.mode).toBe('direct');
        expect(r.digest).toBe(sha256Digest(data));
        expect((await readFile(join(dir, name))).equals(data)).toBe(true);
      }
      expect(gets.active.size).toBe(0);
    } finally {
      await caches.close();
      await client.close();
      await origin.close();
      await cleanup();
    }
  });
});
