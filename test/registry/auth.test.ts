import { MockAgent } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { isDfError } from '../../src/errors.js';
import { RegistryAuth, type RepoScope } from '../../src/registry/auth.js';
import { StaticCredentials } from '../../src/registry/credentials.js';

const pull: RepoScope[] = [{ repository: 'a/b', actions: 'pull' }];
const push: RepoScope[] = [
  { repository: 'a/b', actions: 'pull,push' },
  { repository: 'c/d', actions: 'pull' },
];
const challenge = 'Bearer realm="https://auth.test/token",service="reg.test"';

function setup(opts: { creds?: StaticCredentials; now?: () => number } = {}) {
  const agent = new MockAgent();
  agent.disableNetConnect();
  const auth = new RegistryAuth({
    dispatcher: agent,
    credentials: opts.creds,
    timeoutMs: 1000,
    userAgent: 'test',
    now: opts.now,
  });
  return { agent, auth, pool: agent.get('https://auth.test') };
}

describe('RegistryAuth', () => {
  let agent: MockAgent | undefined;
  afterEach(async () => {
    await agent?.close();
    agent = undefined;
  });

  it('is anonymous until a host challenges', async () => {
    const s = setup();
    agent = s.agent;
    expect(await s.auth.authorization('reg.test', pull)).toBeUndefined();
    expect(s.auth.onChallenge('reg.test', 'Digest realm="x"', pull)).toBe(false);
  });

  it('fetches a bearer token with basic credentials and caches it per scope until expiry', async () => {
    let t = 1_000_000;
    const s = setup({ creds: new StaticCredentials({ username: 'u', password: 'p' }), now: () => t });
    agent = s.agent;
    const seen: { scope: string[]; authz: unknown }[] = [];
    let n = 0;
    s.pool
      .intercept({ path: (p) => p.startsWith('/token'), method: 'GET' })
      .reply((o) => {
        const url = new URL(o.path, 'https://auth.test');
        expect(url.searchParams.get('service')).toBe('reg.test');
        seen.push({
          scope: url.searchParams.getAll('scope'),
          authz: (o.headers as Record<string, string>).authorization,
        });
        n++;
        return { statusCode: 200, data: JSON.stringify({ access_token: `tok${n}`, expires_in: 300 }) };
      })
      .persist();
    expect(s.auth.onChallenge('reg.test', challenge, pull)).toBe(true);
    expect(await s.auth.authorization('reg.test', pull)).toBe('Bearer tok1');
    expect(await s.auth.authorization('reg.test', pull)).toBe('Bearer tok1');
    // Concurrent requests for a new scope share one token fetch.
    const both = await Promise.all([
      s.auth.authorization('reg.test', push),
      s.auth.authorization('reg.test', push),
    ]);
    expect(both).toEqual(['Bearer tok2', 'Bearer tok2']);
    expect(seen[0]).toEqual({
      scope: ['repository:a/b:pull'],
      authz: `Basic ${Buffer.from('u:p').toString('base64')}`,
    });
    expect(seen[1]!.scope).toEqual(['repository:a/b:pull,push', 'repository:c/d:pull']);
    expect(s.auth.tokenRequests).toBe(2);
    t += 299_000; // past expiry minus margin
    expect(await s.auth.authorization('reg.test', pull)).toBe('Bearer tok3');
  });

  it('uses an identity token as an OAuth2 refresh token', async () => {
    const s = setup({ creds: new StaticCredentials({ identityToken: 'refresh' }) });
    agent = s.agent;
    s.pool.intercept({ path: '/token', method: 'POST' }).reply((o) => {
      const form = new URLSearchParams(String(o.body));
      expect(form.get('grant_type')).toBe('refresh_token');
      expect(form.get('refresh_token')).toBe('refresh');
      expect(form.get('scope')).toBe('repository:a/b:pull');
      return { statusCode: 200, data: JSON.stringify({ token: 'oauth' }) };
    });
    s.auth.onChallenge('reg.test', challenge, pull);
    expect(await s.auth.authorization('reg.test', pull)).toBe('Bearer oauth');
  });

  it('turns a refused token request into UNAUTHORIZED with advice', async () => {
    const s = setup({ creds: new StaticCredentials({ username: 'u', password: 'bad' }) });
    agent = s.agent;
    s.pool.intercept({ path: (p) => p.startsWith('/token') }).reply(401, '{}');
    s.auth.onChallenge('reg.test', challenge, pull);
    const err = await s.auth.authorization('reg.test', pull).catch((e: unknown) => e);
    expect(isDfError(err, 'UNAUTHORIZED')).toBe(true);
    expect((err as Error).message).toBe(
      'authentication to reg.test failed for a/b: check credentials (docker login reg.test or --creds)',
    );
  });

  it('answers basic challenges with credentials, and explains when there are none', async () => {
    const s = setup({ creds: new StaticCredentials({ username: 'u', password: 'p' }, ['reg.test']) });
    agent = s.agent;
    s.auth.onChallenge('reg.test', 'Basic realm="r"', pull);
    expect(await s.auth.authorization('reg.test', pull)).toBe(
      `Basic ${Buffer.from('u:p').toString('base64')}`,
    );
    s.auth.onChallenge('other.test', 'Basic realm="r"', pull);
    const err = await s.auth.authorization('other.test', pull).catch((e: unknown) => e);
    expect(isDfError(err, 'UNAUTHORIZED')).toBe(true);
    expect((err as Error).message).toMatch(/docker login other.test/);
  });
});
