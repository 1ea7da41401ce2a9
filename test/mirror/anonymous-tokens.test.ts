import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Agent } from '../../src/util/undici.js';
import { AnonymousTokens, pullScopeOf, realmAllowed } from '../../src/mirror/anonymous-tokens.js';

describe('realmAllowed', () => {
  it('takes https realms and plain HTTP only on the registry host, never link-local addresses', () => {
    expect(realmAllowed(new URL('https://auth.docker.io/token'), 'registry-1.docker.io')).toBe(true);
    expect(realmAllowed(new URL('http://127.0.0.1:9000/token'), '127.0.0.1:5000')).toBe(true);
    expect(realmAllowed(new URL('http://reg.example/token'), 'REG.example:443')).toBe(true);
    // a registry may not point the mirror at an internal plain-HTTP service
    expect(realmAllowed(new URL('http://10.0.0.7/token'), 'registry.example')).toBe(false);
    expect(realmAllowed(new URL('http://169.254.169.254/latest/meta-data'), '169.254.169.254')).toBe(false);
    expect(realmAllowed(new URL('https://169.254.169.254/token'), 'registry.example')).toBe(false);
    expect(realmAllowed(new URL('https://[fe80::1]/token'), 'registry.example')).toBe(false);
    expect(realmAllowed(new URL('ftp://registry.example/token'), 'registry.example')).toBe(false);
  });
});

describe('pullScopeOf', () => {
  it('names the pull scope of manifest and blob paths only', () => {
    expect(pullScopeOf('/v2/library/busybox/manifests/latest')).toBe('repository:library/busybox:pull');
    expect(pullScopeOf('/v2/a/b/c/blobs/sha256:00')).toBe('repository:a/b/c:pull');
    expect(pullScopeOf('/v2/')).toBeUndefined();
    expect(pullScopeOf('/v2/x/tags/list')).toBeUndefined();
  });
});

describe('AnonymousTokens', () => {
  let server: Server;
  let base: string;
  const seen: string[] = [];
  let answer: { status: number; body: string } = { status: 200, body: '{"token":"t1","expires_in":300}' };
  const agent = new Agent();

  beforeAll(async () => {
    server = createServer((req, res) => {
      seen.push(req.url ?? '');
      // an anonymous token request carries no credentials
      if (req.headers.authorization) res.writeHead(400).end();
      else res.writeHead(answer.status, { 'content-type': 'application/json' }).end(answer.body);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    await agent.close();
    await new Promise((r) => server.close(r));
  });

  const tokens = (now = () => Date.now()) =>
    new AnonymousTokens({ dispatcher: agent, timeoutMs: 5_000, userAgent: 'test', now });
  const reg = '127.0.0.1:5000';
  const path = '/v2/library/app/manifests/v1';
  const bearer = (scope: string, realm = `${base}/token`) =>
    `Bearer realm="${realm}",service="svc",scope="${scope}"`;

  it('meets only a Bearer challenge for the repository of the path, with a realm it may ask', () => {
    const t = tokens();
    expect(t.challenge(reg, path, bearer('repository:library/app:pull'))?.key).toBe(
      '127.0.0.1:5000|repository:library/app:pull',
    );
    // the scope asked for is always this repository's pull, whatever else the registry names
    const url = t.challenge(reg, path, bearer('repository:library/app:pull,push'))!.url;
    expect(url.searchParams.getAll('scope')).toEqual(['repository:library/app:pull']);
    expect(url.searchParams.get('service')).toBe('svc');
    expect(t.challenge(reg, path, 'Basic realm="registry"')).toBeUndefined();
    expect(t.challenge(reg, path, bearer('repository:other/app:pull'))).toBeUndefined();
    expect(t.challenge(reg, path, bearer('repository:library/app:push'))).toBeUndefined();
    expect(t.challenge(reg, path, `Bearer realm="${base}/token",service="svc"`)).toBeUndefined();
    expect(t.challenge(reg, '/v2/', bearer('repository:library/app:pull'))).toBeUndefined();
    expect(t.challenge('registry.example', path, bearer('repository:library/app:pull'))).toBeUndefined();
    expect(t.challenge(reg, path, bearer('repository:library/app:pull', 'not a url'))).toBeUndefined();
    expect(t.challenge(reg, path, undefined)).toBeUndefined();
  });

  it('fetches one token for requests at once, holds it until it expires', async () => {
    let now = 1_000_000;
    const t = tokens(() => now);
    const ch = t.challenge(reg, path, bearer('repository:library/app:pull'))!;
    seen.length = 0;
    const got = await Promise.all([t.token(ch), t.token(ch), t.token(ch)]);
    expect(got).toEqual(['t1', 't1', 't1']);
    expect(seen).toHaveLength(1);
    expect(seen[0]).toContain('scope=repository%3Alibrary%2Fapp%3Apull');
    expect(t.held(reg, '/v2/library/app/blobs/sha256:00')).toBe('t1');
    now += 300_000;
    expect(t.held(reg, path)).toBeUndefined();
  });

  it('remembers a refusal for the scope; a failing or lying token server gives no token', async () => {
    let now = 5_000_000;
    const t = tokens(() => now);
    const ch = t.challenge(reg, path, bearer('repository:library/app:pull'))!;
    answer = { status: 401, body: '{}' };
    seen.length = 0;
    expect(await t.token(ch)).toBeUndefined();
    expect(await t.token(ch)).toBeUndefined();
    expect(seen).toHaveLength(1);
    expect(t.counters.refused).toBe(1);
    now += 61_000;
    for (const body of [
      'not json',
      '{"token":"has space"}',
      '{"token":' + JSON.stringify('x'.repeat(70_000)) + '}',
    ]) {
      answer = { status: 200, body };
      expect(await t.token(ch)).toBeUndefined();
      now += 61_000;
    }
    // the registry refused a token that was given: not asked again for a minute either
    answer = { status: 200, body: '{"token":"t2"}' };
    expect(await t.token(ch)).toBe('t2');
    t.refuse(ch.key);
    expect(t.held(reg, path)).toBeUndefined();
    const before = seen.length;
    expect(await t.token(ch)).toBeUndefined();
    expect(seen.length).toBe(before);
    answer = { status: 200, body: '{"token":"t1","expires_in":300}' };
  });

  it('does not make every request wait for a token server that does not answer', async () => {
    const silent = createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const realm = `http://127.0.0.1:${(silent.address() as AddressInfo).port}/token`;
    try {
      const t = new AnonymousTokens({ dispatcher: agent, timeoutMs: 300, userAgent: 'test' });
      const ch = t.challenge(reg, path, bearer('repository:library/app:pull', realm))!;
      expect(await t.token(ch)).toBeUndefined();
      expect(t.counters).toMatchObject({ fetched: 1, refused: 1 });
      // the second request is not sent to it (nor waited for)
      expect(await t.token(ch)).toBeUndefined();
      expect(t.counters.fetched).toBe(1);
    } finally {
      silent.closeAllConnections();
      await new Promise((r) => silent.close(r));
    }
  });

  it('keeps at most maxTokens', async () => {
    const t = new AnonymousTokens({ dispatcher: agent, timeoutMs: 5_000, userAgent: 'test', maxTokens: 2 });
    for (const repo of ['a', 'b', 'c']) {
      const p = `/v2/${repo}/manifests/v1`;
      const ch = t.challenge(reg, p, bearer(`repository:${repo}:pull`))!;
      expect(await t.token(ch)).toBe('t1');
    }
    expect(t.held(reg, '/v2/a/manifests/v1')).toBeUndefined();
    expect(t.held(reg, '/v2/c/manifests/v1')).toBe('t1');
  });
});
