import { MockAgent } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { RegistryAuth, type RepoScope } from '../../src/registry/auth.js';

// A token server is outside the cluster's trust: whatever it answers, RegistryAuth returns a header-safe
// token with a bounded lifetime or a REGISTRY error, never a TypeError or a token cached forever.
const pull: RepoScope[] = [{ repository: 'a/b', actions: 'pull' }];
const challenge = 'Bearer realm="https://auth.test/token",service="reg.test"';

let agent: MockAgent | undefined;
afterEach(async () => {
  await agent?.close();
  agent = undefined;
});

let fetches = 0;

function serve(body: string, now: () => number = () => 1_000_000): RegistryAuth {
  fetches = 0;
  agent = new MockAgent();
  agent.disableNetConnect();
  agent
    .get('https://auth.test')
    .intercept({ path: (p) => p.startsWith('/token'), method: 'GET' })
    .reply(() => {
      fetches++;
      return { statusCode: 200, data: body };
    })
    .persist();
  const auth = new RegistryAuth({ dispatcher: agent, timeoutMs: 1000, userAgent: 'test', now });
  auth.onChallenge('reg.test', challenge, pull);
  return auth;
}

describe('token server answers', () => {
  it.each([
    ['null', 'null', /not an object/],
    ['an array', '[1]', /not an object/],
    ['a string', '"tok"', /not an object/],
    ['a number token', '{"token":5}', /not a string/],
    ['an object token', '{"token":{"a":1}}', /not a string/],
    ['a token with CR LF', '{"token":"abc\\r\\nX-Injected: 1"}', /visible ASCII/],
    ['a 70000-character token', JSON.stringify({ token: 'x'.repeat(70_000) }), /at most 65536/],
  ])('refuses %s with REGISTRY', async (_what, body, why) => {
    const auth = serve(body);
    await expect(auth.authorization('reg.test', pull)).rejects.toMatchObject({
      code: 'REGISTRY',
      message: expect.stringMatching(why),
    });
  });

  it('refuses an answer larger than 1 MiB', async () => {
    const auth = serve(JSON.stringify({ token: 't', pad: 'x'.repeat(1 << 20) }));
    await expect(auth.authorization('reg.test', pull)).rejects.toMatchObject({
      code: 'REGISTRY',
      message: expect.stringMatching(/larger than 1048576 bytes/),
    });
  });

  it('bounds a lifetime of 1e999 seconds to a day', async () => {
    let t = 1_000_000;
    const auth = serve('{"token":"t1","expires_in":1e999}', () => t);
    expect(await auth.authorization('reg.test', pull)).toBe('Bearer t1');
    t += 3600 * 1000;
    expect(await auth.authorization('reg.test', pull)).toBe('Bearer t1');
    expect(fetches).toBe(1);
    t += 2 * 24 * 3600 * 1000;
    expect(await auth.authorization('reg.test', pull)).toBe('Bearer t1');
    expect(fetches).toBe(2);
  });
});
