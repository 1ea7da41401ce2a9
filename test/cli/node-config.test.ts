/**
 * `dfnode run`, `mount` and `preheat` refuse at start, with a CONFIG error (exit code 2), a configuration a
 * node would otherwise run on silently wrong: seeds without a cluster token (the seeds refuse such a node, so
 * it would run without P2P), and an unknown key in the config file.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../helpers/cli.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dfnode-cli-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

// `--no-fuse-manager`: should the check ever regress, `dfnode run` must not leave a detached manager behind.

/** The environment of the test without any DFNODE_ setting (a token there would hide the case). */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('DFNODE_')) env[k] = v;
  return env;
}

const nodeDirs = (name: string) => [
  '--cache-dir',
  join(dir, name, 'cache'),
  '--state-dir',
  join(dir, name, 'state'),
  '--metrics-address',
  '',
];

describe('dfnode node commands: configuration checked at start', () => {
  const cases: Array<[string, () => string[]]> = [
    [
      'run',
      () => [
        'run',
        '--snapshotter-root',
        join(dir, 'run', 'snap'),
        '--snapshotter-socket',
        join(dir, 'run.sock'),
      ],
    ],
    ['mount', () => ['mount', 'registry.invalid/img:1', join(dir, 'mnt')]],
    ['preheat', () => ['preheat', 'registry.invalid/img:1']],
  ];
  for (const [name, args] of cases)
    it(`${name} with seeds and no cluster token fails with exit code 2`, async () => {
      const r = await runCli('dfnode', [...args(), ...nodeDirs(name), '--seeds', '127.0.0.1:1'], {
        env: cleanEnv(),
        timeoutMs: 20_000,
      });
      expect(r.code, r.stderr).toBe(2);
      expect(r.stderr).toMatch(/p2p\.seeds is set .* but the cluster token is empty/);
    });

  it('run with an unknown key in the config file fails with exit code 2 naming it', async () => {
    const cfg = join(dir, 'seedz.json');
    await writeFile(cfg, JSON.stringify({ p2p: { seedz: ['127.0.0.1:1'] } }));
    const r = await runCli('dfnode', ['run', '--no-fuse-manager', '-c', cfg, ...nodeDirs('unknown')], {
      env: cleanEnv(),
      timeoutMs: 20_000,
    });
    expect(r.code, r.stderr).toBe(2);
    expect(r.stderr).toContain(`unknown key p2p.seedz in config file ${cfg}`);
  });
});
