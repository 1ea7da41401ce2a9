/**
 * What `dfnode run` tells about a running FUSE manager's configuration (config-drift.ts): the manager keeps the
 * settings it was started with, so the settings of a new start that differ are named (never their values).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { loadConfig, type Config } from '../../src/config.js';
import { ensureFuseManager } from '../../src/fusemanager/client.js';
import { readStartedWith, settingsNotApplied } from '../../src/fusemanager/config-drift.js';
import { fuseManagerPaths } from '../../src/fusemanager/protocol.js';
import { tempDir } from '../helpers/temp.js';

let tmp: { dir: string; cleanup: () => Promise<void> };
beforeEach(async () => {
  tmp = await tempDir('dfdrift-');
});
afterEach(async () => {
  await tmp.cleanup();
});

const config = (flags: Record<string, unknown> = {}): Config =>
  loadConfig({ env: {}, flags: { node: { stateDir: '/run/x', metricsAddress: '' }, ...flags } });

/** The configuration as the manager's starter writes it, read back as dfnode run reads it. */
async function startedWith(cfg: Config): Promise<unknown> {
  const file = join(tmp.dir, 'fuse-manager.config.json');
  await writeFile(file, JSON.stringify(cfg));
  return readStartedWith(file);
}

it('names the manager settings a new configuration changes, not the others, and no values', async () => {
  const running = await startedWith(config({ p2p: { clusterToken: 'secret-token-1234567890' } }));
  expect(settingsNotApplied(running, config({ p2p: { clusterToken: 'secret-token-1234567890' } }))).toEqual(
    [],
  );
  const changed = config({
    mirror: { listen: '127.0.0.1:65001' },
    node: { stateDir: '/run/x', metricsAddress: '127.0.0.1:9877' },
    p2p: { clusterToken: 'secret-token-0987654321' },
  });
  const differ = settingsNotApplied(running, changed);
  expect(differ).toEqual(['p2p', 'mirror', 'node.metricsAddress']);
  expect(differ.join()).not.toMatch(/secret|65001/);
  // the snapshotter and the state dir are dfnode run's own: a restart of dfnode run applies them
  expect(
    settingsNotApplied(
      running,
      config({ snapshotter: { root: '/elsewhere' }, p2p: { clusterToken: 'secret-token-1234567890' } }),
    ),
  ).toEqual([]);
});

it('says nothing when the file cannot be read back: missing, not JSON, or oversized', async () => {
  expect(await readStartedWith(join(tmp.dir, 'none.json'))).toBeUndefined();
  const bad = join(tmp.dir, 'bad.json');
  await writeFile(bad, '{"cache": {"dir": "/x"');
  expect(await readStartedWith(bad)).toBeUndefined();
  const big = join(tmp.dir, 'big.json');
  await writeFile(big, JSON.stringify({ pad: 'x'.repeat(1 << 20) }));
  expect(await readStartedWith(big)).toBeUndefined();
});

it('dfnode run connecting to a running manager started with other mirror settings warns, naming them', async () => {
  const stateDir = join(tmp.dir, 'state');
  const wanted = loadConfig({
    env: {},
    flags: { node: { stateDir, metricsAddress: '' }, mirror: { listen: '127.0.0.1:65001' } },
  });
  const paths = fuseManagerPaths(stateDir);
  await mkdir(stateDir, { recursive: true });
  // a manager answering its health check, started with the mirror off
  const manager = createServer((_, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ pid: 4242, mounts: 0 }));
  });
  await new Promise<void>((r) => manager.listen(paths.socket, () => r()));
  try {
    const warnings = async (startedWith: Config) => {
      await writeFile(paths.config, JSON.stringify(startedWith));
      const lines: string[] = [];
      const sink = new Writable({
        write(chunk: Buffer, _enc, cb) {
          lines.push(chunk.toString());
          cb();
        },
      });
      const fm = await ensureFuseManager(wanted, pino({ level: 'warn' }, sink));
      expect(fm).toMatchObject({ pid: 4242, started: false });
      return lines.map((l) => JSON.parse(l) as { msg: string; settings?: string[] });
    };
    const off = loadConfig({ env: {}, flags: { node: { stateDir, metricsAddress: '' } } });
    const w = await warnings(off);
    expect(w).toHaveLength(1);
    expect(w[0]!.settings).toEqual(['mirror']);
    expect(w[0]!.msg).toMatch(/keeps the configuration it was started with.*--stop-fuse-manager/);
    expect(JSON.stringify(w)).not.toMatch(/65001/);
    expect(await warnings(wanted)).toEqual([]);
  } finally {
    manager.closeAllConnections();
    await new Promise<void>((r) => manager.close(() => r()));
  }
});
