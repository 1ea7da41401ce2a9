import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, expect, it } from 'vitest';
import {
  containerdHostsToml,
  HOSTS_MARKER,
  removeContainerdHosts,
  writeContainerdHosts,
} from '../../src/mirror/containerd-hosts.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dfm-hosts-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

it('writes _default/hosts.toml once, leaves it alone when unchanged, and removes only its own', async () => {
  expect(await writeContainerdHosts(dir, '127.0.0.1:65001')).toBe('written');
  const file = join(dir, '_default', 'hosts.toml');
  expect(await readFile(file, 'utf8')).toBe(containerdHostsToml('127.0.0.1:65001'));
  expect(await writeContainerdHosts(dir, '127.0.0.1:65001')).toBe('unchanged');
  expect(await writeContainerdHosts(dir, '127.0.0.1:65002')).toBe('written');
  expect(await readFile(file, 'utf8')).toContain('http://127.0.0.1:65002');
  expect(await removeContainerdHosts(dir)).toBe(true);
  await expect(stat(join(dir, '_default'))).rejects.toThrow();
  expect(await removeContainerdHosts(dir)).toBe(false);
});

it("never replaces a user's hosts.toml without --force, and keeps their other files on removal", async () => {
  await mkdir(join(dir, 'docker.io'), { recursive: true });
  const theirs = 'server = "https://registry-1.docker.io"\n';
  await writeFile(join(dir, 'docker.io', 'hosts.toml'), theirs);
  await expect(writeContainerdHosts(dir, '127.0.0.1:65001', { registry: 'docker.io' })).rejects.toThrow(
    /not written by dfnode/,
  );
  expect(await removeContainerdHosts(dir, 'docker.io')).toBe(false);
  expect(await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8')).toBe(theirs);
  await writeFile(join(dir, 'docker.io', 'ca.crt'), 'x');
  expect(await writeContainerdHosts(dir, '127.0.0.1:65001', { registry: 'docker.io', force: true })).toBe(
    'written',
  );
  expect((await readFile(join(dir, 'docker.io', 'hosts.toml'), 'utf8')).startsWith(HOSTS_MARKER)).toBe(true);
  expect(await removeContainerdHosts(dir, 'docker.io')).toBe(true);
  expect(await readFile(join(dir, 'docker.io', 'ca.crt'), 'utf8')).toBe('x');
});

it('refuses bad registry names and mirror addresses', async () => {
  await expect(writeContainerdHosts(dir, '127.0.0.1:65001', { registry: '../etc' })).rejects.toThrow(
    /invalid registry host/,
  );
  await expect(writeContainerdHosts(dir, 'no-port')).rejects.toThrow(/host:port/);
});
