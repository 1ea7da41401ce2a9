/**
 * The config schema is strict at every level: a misspelt key is an error naming it and where it came from,
 * not a silently ignored setting. The shipped examples (README, deploy/) still load.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config.js';
import { REPO_ROOT } from './helpers/fixtures.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dfnode-config-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function file(name: string, body: unknown): Promise<string> {
  const path = join(dir, name);
  await writeFile(path, typeof body === 'string' ? body : JSON.stringify(body));
  return path;
}

describe('config: unknown keys', () => {
  it('a misspelt key in the file is a CONFIG error naming the key, the file and the known keys', async () => {
    const path = await file('seedz.json', { p2p: { seedz: ['seed:7700'], clusterToken: 't' } });
    let err: any;
    try {
      loadConfig({ file: path, env: {} });
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'CONFIG' });
    expect(err.message).toContain(`unknown key p2p.seedz in config file ${path}`);
    expect(err.message).toMatch(/known at p2p: seeds, /);
  });

  it('at every level: top, section and nested (p2p.tls)', async () => {
    for (const [name, body, key] of [
      ['top.json', { cach: { dir: '/x' } }, 'cach'],
      ['section.json', { cache: { highWaterMark: '1G' } }, 'cache.highWaterMark'],
      ['nested.json', { p2p: { tls: { certificate: '/c.pem' } } }, 'p2p.tls.certificate'],
    ] as const) {
      const path = await file(name, body);
      expect(() => loadConfig({ file: path, env: {} }), name).toThrow(
        `unknown key ${key} in config file ${path}`,
      );
    }
  });

  it('from the command line, the source is named too', () => {
    expect(() => loadConfig({ env: {}, flags: { node: { stateDirectory: '/x' } } })).toThrow(
      'unknown key node.stateDirectory from the command line',
    );
  });

  it('the resolved configuration loads again (the FUSE manager is started with it)', async () => {
    const cfg = loadConfig({
      env: {},
      flags: { p2p: { seeds: ['a:1'], clusterToken: 't' }, cache: { highWatermark: '2G' } },
    });
    expect(loadConfig({ file: await file('resolved.json', cfg), env: {} })).toEqual(cfg);
  });

  it('the README example and the Kubernetes ConfigMap load', async () => {
    const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
    const blocks = [...readme.matchAll(/```json\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(blocks.length).toBeGreaterThan(0);
    const cm = readFileSync(join(REPO_ROOT, 'deploy', 'k8s', 'configmap.yaml'), 'utf8');
    blocks.push(cm.slice(cm.indexOf('config.json: |') + 'config.json: |'.length));
    for (const [i, text] of blocks.entries()) {
      const path = await file(`example-${i}.json`, text);
      expect(() => loadConfig({ file: path, env: {} }), `example ${i}`).not.toThrow();
    }
  });
});
