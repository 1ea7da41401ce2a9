/**
 * Hostile or broken registries: answers larger than asked for are refused with a clear error, and
 * pre-signed storage URLs never reach error details (or the logs that print them).
 */
import { MockAgent } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { RegistryAuth, type RepoScope } from '../../src/registry/auth.js';
import { MAX_TOKEN_ANSWER } from '../../src/registry/token-response.js';
import { RegistryClient } from '../../src/registry/client.js';
import { parseReference } from '../../src/registry/reference.js';
import { rejection } from '../helpers/errors.js';

const ref = parseReference('reg.test/a/b:1');
const D = `sha256:${'0'.repeat(64)}`;
const pull: RepoScope[] = [{ repository: 'a/b', actions: 'pull' }];

let agent: MockAgent | undefined;
afterEach(async () => {
  await agent?.close();
  agent = undefined;
});

function mockAgent(): MockAgent {
  agent = new MockAgent();
  agent.disableNetConnect();
  return agent;
}

describe('hostile registry answers', () => {
  it('getBlobTail refuses a Content-Range larger than the suffix asked for, before reading it', async () => {
    const a = mockAgent();
    const client = new RegistryClient({ dispatcher: a, retries: 0 });
    const big = Buffer.alloc(256 * 1024, 7);
    a.get('https://reg.test')
      .intercept({ path: `/v2/a/b/blobs/${D}`, method: 'GET' })
      .reply(206, big, {
        headers: { 'content-range': `bytes 0-${big.length - 1}/${big.length}` },
      });
    const err = await rejection(client.getBlobTail(ref, D, 96));
    expect(err.code).toBe('REGISTRY');
    expect(err.message).toMatch(/suffix range of 96 bytes .* with 262144 bytes/);
  });

  it('getBlobTail still takes a suffix shorter than asked for (a blob smaller than the suffix)', async () => {
    const a = mockAgent();
    const client = new RegistryClient({ dispatcher: a, retries: 0 });
    a.get('https://reg.test')
      .intercept({ path: `/v2/a/b/blobs/${D}`, method: 'GET' })
      .reply(206, Buffer.from('abc'), { headers: { 'content-range': 'bytes 0-2/3' } });
    const { data, size } = await client.getBlobTail(ref, D, 96);
    expect(data.toString()).toBe('abc');
    expect(size).toBe(3);
  });

  it('a token answer larger than the limit fails with a clear error', async () => {
    const a = mockAgent();
    const auth = new RegistryAuth({ dispatcher: a, timeoutMs: 5000, userAgent: 'test' });
    const huge = '{"token":"' + 'x'.repeat(MAX_TOKEN_ANSWER) + '"}';
    a.get('https://auth.test')
      .intercept({ path: (p) => p.startsWith('/token') })
      .reply(200, huge);
    auth.onChallenge('reg.test', 'Bearer realm="https://auth.test/token",service="reg.test"', pull);
    const err = await rejection(auth.authorization('reg.test', pull));
    expect(err.code).toBe('REGISTRY');
    expect(err.message).toMatch(/token answer from auth\.test is larger than 1048576 bytes/);
  });

  it('a storage error after a redirect names the URL without its query string (signature)', async () => {
    const a = mockAgent();
    const client = new RegistryClient({ dispatcher: a, retries: 0 });
    const signed = '/bucket/blob?X-Amz-Signature=secretsig&X-Amz-Credential=AKIAKEY';
    a.get('https://reg.test')
      .intercept({ path: `/v2/a/b/blobs/${D}`, method: 'GET' })
      .reply(307, '', { headers: { location: `https://storage.test${signed}` } });
    a.get('https://storage.test').intercept({ path: signed, method: 'GET' }).reply(403, 'denied');
    const err = await rejection(client.getBlobRange(ref, D, 0, 10));
    expect(err.code).toBe('FORBIDDEN');
    const shown = JSON.stringify({ message: err.message, details: err.details });
    expect(shown).not.toContain('secretsig');
    expect(shown).not.toContain('AKIAKEY');
    expect(err.details.url).toBe('https://storage.test/bucket/blob?<redacted>');
  });
});
