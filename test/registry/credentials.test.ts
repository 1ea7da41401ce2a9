import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isDfError } from '../../src/errors.js';
import {
  DockerConfigCredentials,
  StaticCredentials,
  chainCredentials,
  normalizeRegistryKey,
} from '../../src/registry/credentials.js';

const b64 = (s: string): string => Buffer.from(s).toString('base64');

describe('docker config credentials', () => {
  let dir: string;
  let oldPath: string | undefined;

  const write = (name: string, config: unknown): string => {
    const p = join(dir, name);
    writeFileSync(p, typeof config === 'string' ? config : JSON.stringify(config));
    return p;
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'dfnode-creds-'));
    // A fake credential helper: knows one server, logs the server it was asked about.
    const helper = join(dir, 'docker-credential-fake');
    writeFileSync(
      helper,
      `#!/bin/sh
[ "$1" = get ] || exit 1
read server
echo "$server" >> "${dir}/asked"
case "$server" in
  helped.io) echo '{"ServerURL":"helped.io","Username":"hu","Secret":"hs"}' ;;
  https://index.docker.io/v1/) echo '{"ServerURL":"hub","Username":"<token>","Secret":"refresh-me"}' ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
`,
    );
    chmodSync(helper, 0o755);
    oldPath = process.env.PATH;
    process.env.PATH = `${dir}${delimiter}${oldPath}`;
  });
  afterAll(() => {
    process.env.PATH = oldPath;
    rmSync(dir, { recursive: true, force: true });
  });

  it('normalizes auths keys', () => {
    expect(normalizeRegistryKey('https://index.docker.io/v1/')).toBe('registry-1.docker.io');
    expect(normalizeRegistryKey('docker.io')).toBe('registry-1.docker.io');
    expect(normalizeRegistryKey('http://LocalHost:5000/v2/')).toBe('localhost:5000');
    expect(normalizeRegistryKey('ghcr.io')).toBe('ghcr.io');
  });

  it('reads auth, username/password, identity and registry tokens from auths', async () => {
    const path = write('auths.json', {
      auths: {
        'https://index.docker.io/v1/': { auth: b64('hubuser:hub:pass') },
        'http://127.0.0.1:5000': { username: 'u', password: 'p' },
        'quay.io': { auth: '', identitytoken: 'idtok' },
        'reg.io': { registrytoken: 'ready' },
        'empty.io': { auth: '' },
      },
    });
    const c = new DockerConfigCredentials({ path });
    expect(await c.get('registry-1.docker.io')).toEqual({ username: 'hubuser', password: 'hub:pass' });
    expect(await c.get('127.0.0.1:5000')).toEqual({ username: 'u', password: 'p' });
    expect(await c.get('quay.io')).toEqual({ identityToken: 'idtok' });
    expect(await c.get('reg.io')).toEqual({ registryToken: 'ready' });
    expect(await c.get('empty.io')).toBeUndefined();
    expect(await c.get('other.io')).toBeUndefined();
  });

  it('treats a missing file as anonymous and rejects bad JSON or a bad auth field clearly', async () => {
    expect(await new DockerConfigCredentials({ path: join(dir, 'nope.json') }).get('x.io')).toBeUndefined();
    const bad = new DockerConfigCredentials({ path: write('bad.json', '{not json') });
    await expect(bad.get('x.io')).rejects.toSatisfy(
      (e) => isDfError(e, 'CONFIG') && /not valid JSON/.test((e as Error).message),
    );
    const badAuth = new DockerConfigCredentials({
      path: write('badauth.json', { auths: { 'x.io': { auth: b64('nocolon') } } }),
    });
    await expect(badAuth.get('x.io')).rejects.toSatisfy((e) => isDfError(e, 'CONFIG'));
  });

  it('runs credHelpers and credsStore helpers, falling back to auths', async () => {
    const path = write('helpers.json', {
      credHelpers: { 'helped.io': 'fake', 'unhelped.io': 'fake' },
      credsStore: 'fake',
      auths: { 'unhelped.io': { auth: b64('a:b') } },
    });
    const c = new DockerConfigCredentials({ path });
    expect(await c.get('helped.io')).toEqual({ username: 'hu', password: 'hs' });
    // Helper knows nothing: the auths entry is used.
    expect(await c.get('unhelped.io')).toEqual({ username: 'a', password: 'b' });
    // credsStore, Docker Hub under its historical key; "<token>" marks an identity token.
    expect(await c.get('registry-1.docker.io')).toEqual({ identityToken: 'refresh-me' });
    expect(await c.get('nowhere.io')).toBeUndefined();
  });

  it('falls back to auths when the configured helper is not installed', async () => {
    const path = write('missing-helper.json', {
      credsStore: 'not-installed-xyz',
      auths: { 'x.io': { auth: b64('u:p') } },
    });
    expect(await new DockerConfigCredentials({ path }).get('x.io')).toEqual({ username: 'u', password: 'p' });
  });
});

describe('static and chained credentials', () => {
  it('parses user:password and limits hosts', async () => {
    const s = StaticCredentials.fromString('me:pa:ss', ['127.0.0.1:5000']);
    expect(await s.get('127.0.0.1:5000')).toEqual({ username: 'me', password: 'pa:ss' });
    expect(await s.get('other.io')).toBeUndefined();
    expect(() => StaticCredentials.fromString('nocolon')).toThrow(/user:password/);
  });

  it('asks providers in order', async () => {
    const a = new StaticCredentials({ username: 'a', password: '1' }, ['a.io']);
    const b = new StaticCredentials({ username: 'b', password: '2' });
    const c = chainCredentials(a, undefined, b);
    expect(await c.get('a.io')).toEqual({ username: 'a', password: '1' });
    expect(await c.get('z.io')).toEqual({ username: 'b', password: '2' });
  });
});
