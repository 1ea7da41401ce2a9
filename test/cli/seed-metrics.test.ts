/**
 * `dfnode seed` serves its metrics on node.metricsAddress of its config file (or the environment), as `dfnode
 * run` does; given neither that nor --metrics-address, it serves none (the node's default port would collide
 * with a node on the same host).
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { configGives } from '../../src/config.js';
import { startSeedProc } from '../helpers/dfnode-proc.js';
import { freePort } from '../helpers/registry.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dfnode-seed-metrics-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('configGives', () => {
  it('tells a value from the file or the environment from a default', async () => {
    const file = join(dir, 'given.json');
    await writeFile(file, JSON.stringify({ node: { metricsAddress: '127.0.0.1:1' } }));
    const path = ['node', 'metricsAddress'];
    expect(configGives(path, { file, env: {} })).toBe(true);
    expect(configGives(path, { env: {} })).toBe(false);
    expect(configGives(path, { env: { DFNODE_NODE_METRICS_ADDRESS: '127.0.0.1:2' } })).toBe(true);
  });
});

describe('dfnode seed', () => {
  it('serves metrics on node.metricsAddress of its config file', async () => {
    const port = await freePort();
    const file = join(dir, 'seed.json');
    await writeFile(
      file,
      JSON.stringify({
        node: { metricsAddress: `127.0.0.1:${port}` },
        p2p: { clusterToken: 'seed-metrics-test-token' },
      }),
    );
    const seed = await startSeedProc(dir, 'seed', ['-c', file]);
    try {
      const res = await fetch(`http://127.0.0.1:${port}/metrics`);
      expect(res.status).toBe(200);
      expect(await res.text()).toMatch(/^dfnode_registry_fetches_total|^# HELP dfnode_peer_requests_total/m);
    } finally {
      await seed.proc.stop();
    }
  });
});
