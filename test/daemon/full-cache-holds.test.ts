/**
 * The daemon's wiring of a full cache to its preheat holds: NodeRuntime answers the cache's onFull by giving
 * back the oldest preheat's layers (with P2P on, where preheats are held), and the mirror chains its
 * lingering blobs after them until it closes.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { NodeRuntime } from '../../src/daemon/node-runtime.js';
import { NativeFuseBinding } from '../../src/fuse/native-binding.js';
import { startMirror } from '../../src/mirror/start-mirror.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { RegistryClient } from '../../src/registry/client.js';
import { silentLogger } from '../../src/log.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

describe('a full cache and the daemon', () => {
  it('gives back the oldest preheat hold, then nothing; the mirror adds its lingering blobs until it closes', async () => {
    const { dir, cleanup } = await tempDir('dfnode-full-cache-');
    cleanups.push(cleanup);
    const config = loadConfig({
      env: {},
      flags: {
        cache: { dir: join(dir, 'cache') },
        node: { stateDir: join(dir, 'state'), containerdAddress: '' },
        p2p: { seeds: ['127.0.0.1:9'], clusterToken: 'full-cache-token', listen: '127.0.0.1:0' },
        mirror: { listen: '127.0.0.1:0' },
      },
    });
    const p2p = new P2pNode({ config });
    const client = new RegistryClient({ plainHttp: true });
    cleanups.push(() => client.close());
    const rt = new NodeRuntime({ config, client, p2p, binding: new NativeFuseBinding() });
    await rt.cache.init();
    cleanups.push(() => rt.cache.close());
    const released: string[] = [];
    rt.preheatHolds.hold(async () => void released.push('a'));
    rt.preheatHolds.hold(async () => void released.push('b'));
    expect(await rt.cache.onFull?.()).toBe(true);
    expect(released).toEqual(['a']);
    expect(await rt.cache.onFull?.()).toBe(true);
    expect(released).toEqual(['a', 'b']);
    expect(await rt.cache.onFull?.()).toBe(false);

    const own = rt.cache.onFull;
    const mirror = (await startMirror(config, silentLogger, { caches: rt.cache, p2p }))!;
    expect(rt.cache.onFull).not.toBe(own);
    // no preheat held, no blob lingering
    expect(await rt.cache.onFull?.()).toBe(false);
    await mirror.close();
    expect(rt.cache.onFull).toBe(own);
    await rt.preheatHolds.close();
  });
});
