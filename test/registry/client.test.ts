import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { MockAgent } from 'undici';
import { afterEach, describe, expect, it } from 'vitest';
import { RegistryClient } from '../../src/registry/client.js';
import { parseContentRange } from '../../src/registry/http-body.js';
import { StaticCredentials } from '../../src/registry/credentials.js';
import { parseReference } from '../../src/registry/reference.js';
import { sha256Digest } from '../helpers/digest.js';
import { rejection } from '../helpers/errors.js';

const ref = parseReference('reg.test/a/b:1');
const D = `sha256:${'0'.repeat(64)}`;

describe('RegistryClient (mocked transport)', () => {
  let agent: MockAgent;
  let client: RegistryClient;
  const make = (o: ConstructorParameters<typeof RegistryClient>[0] = {}) => {
    agent = new MockAgent();
    agent.disableNetConnect();
    client = new RegistryClient({ dispatcher: agent, retries: 2, retryBaseMs: 1, retryMaxMs: 2, ...o });
    return agent.get('https://reg.test');
  };
  afterEach(async () => {
    await agent?.close();
  });

  it('retries 429 and 5xx, then reports the registry error message', async () => {
    const pool = make();
    pool.intercept({ path: `/v2/a/b/blobs/${D}`, method: 'HEAD' }).reply(429, '');
    pool.intercept({ path: `/v2/a/b/blobs/${D}`, method: 'HEAD' }).reply(502, '');
    pool
      .intercept({ path: `/v2/a/b/blobs/${D}`, method: 'HEAD' })
      .reply(200, '', { headers: { 'content-length': '42' } });
    expect(await client.headBlob(ref, D)).toBe(42);

    pool
      .intercept({ path: '/v2/a/b/manifests/1', method: 'GET' })
      .reply(500, JSON.stringify({ errors: [{ code: 'UNKNOWN', message: 'database on fire' }] }))
      .times(3);
    const err = await rejection(client.getManifest(ref));
    expect(err.code).toBe('REGISTRY');
    expect(err.message).toContain('reg.test answered 500');
    expect(err.message).toContain('UNKNOWN: database on fire');
    expect(err.message).toContain('after 3 attempts');
  });

  it('waits as long as Retry-After asks (seconds or a date) before it tries again', async () => {
    const pool = make();
    pool
      .intercept({ path: `/v2/a/b/blobs/${D}`, method: 'HEAD' })
      .reply(429, '', { headers: { 'retry-after': '1' } });
    pool
      .intercept({ path: `/v2/a/b/blobs/${D}`, method: 'HEAD' })
      .reply(503, '', { headers: { 'retry-after': new Date(Date.now() + 3000).toUTCString() } });
    pool
      .intercept({ path: `/v2/a/b/blobs/${D}`, method: 'HEAD' })
      .reply(200, '', { headers: { 'content-length': '7' } });
    const t0 = Date.now();
    expect(await client.headBlob(ref, D)).toBe(7);
    // 1 s, then until the date (3 s from the start, less up to 1 s as dates have whole seconds); the backoff
    // alone is 1–2 ms
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1950);
  });

  it('a Retry-After over a minute fails at once and says when to come back', async () => {
    const pool = make();
    pool
      .intercept({ path: '/v2/a/b/manifests/1', method: 'GET' })
      .reply(429, JSON.stringify({ errors: [{ code: 'TOOMANYREQUESTS', message: 'pull rate limit' }] }), {
        headers: { 'retry-after': '3600' },
      });
    const err = await rejection(client.getManifest(ref));
    expect(err.code).toBe('REGISTRY');
    expect(err.message).toContain('reg.test answered 429');
    expect(err.message).toContain('TOOMANYREQUESTS: pull rate limit');
    expect(err.message).toContain('it asks to retry after 60 min');
    expect(err.message).not.toContain('attempts');
    // one request only: a second would find no interceptor left
    agent.assertNoPendingInterceptors();
  });

  it('does not retry 4xx; maps 403 to FORBIDDEN and 400 to REGISTRY with the message', async () => {
    const pool = make();
    pool.intercept({ path: '/v2/a/b/manifests/1', method: 'PUT' }).reply(
      400,
      JSON.stringify({
        errors: [{ code: 'MANIFEST_INVALID', message: 'manifest invalid', detail: 'bad' }],
      }),
    );
    const e1 = await rejection(
      client.putManifest(ref, Buffer.from('{}'), 'application/vnd.oci.image.manifest.v1+json'),
    );
    expect(e1.code).toBe('REGISTRY');
    expect(e1.message).toContain('MANIFEST_INVALID: manifest invalid ("bad")');
    pool
      .intercept({ path: '/v2/a/b/manifests/1', method: 'GET' })
      .reply(403, '{"errors":[{"code":"DENIED","message":"no"}]}');
    const e2 = await rejection(client.getManifest(ref));
    expect(e2.code).toBe('FORBIDDEN');
    expect(e2.message).toContain('DENIED');
  });

  it('retries once after a challenge, then fails with UNAUTHORIZED', async () => {
    const pool = make({ credentials: new StaticCredentials({ username: 'u', password: 'p' }) });
    pool
      .intercept({ path: '/v2/a/b/manifests/1', method: 'GET' })
      .reply(401, '', { headers: { 'www-authenticate': 'Basic realm="x"' } })
      .times(2);
    const err = await rejection(client.getManifest(ref));
    expect(err.code).toBe('UNAUTHORIZED');
    expect(err.message).toMatch(
      /^authentication to reg.test failed for a\/b: check credentials \(docker login reg.test or --creds\)/,
    );
  });

  it('verifies manifests fetched by digest', async () => {
    const pool = make();
    const bytes = Buffer.from('{"schemaVersion":2}');
    pool.intercept({ path: `/v2/a/b/manifests/${D}`, method: 'GET' }).reply(200, bytes, {
      headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
    });
    const err = await rejection(client.getManifest(ref.withDigest(D)));
    expect(err.code).toBe('DIGEST_MISMATCH');
  });

  it('uploads in chunks following relative Location headers', async () => {
    const pool = make({ uploadChunkSize: 4 });
    const data = randomBytes(10);
    const digest = sha256Digest(data);
    const got: Buffer[] = [];
    pool.intercept({ path: `/v2/a/b/blobs/${digest}`, method: 'HEAD' }).reply(404, '');
    pool
      .intercept({ path: '/v2/a/b/blobs/uploads/', method: 'POST' })
      .reply(202, '', { headers: { location: '/up/1?s=a' } });
    for (const [i, range] of ['0-3', '4-7', '8-9'].entries()) {
      pool
        .intercept({ path: `/up/${i + 1}?s=a`, method: 'PATCH', headers: { 'content-range': range } })
        .reply((o) => {
          got.push(Buffer.from(o.body as Uint8Array));
          return {
            statusCode: 202,
            data: '',
            responseOptions: { headers: { location: `/up/${i + 2}?s=a`, range: `0-${range.split('-')[1]}` } },
          };
        });
    }
    pool.intercept({ path: `/up/4?s=a&digest=${encodeURIComponent(digest)}`, method: 'PUT' }).reply(201, '', {
      headers: { 'docker-content-digest': digest },
    });
    expect(await client.pushBlob(ref, digest, data.length, () => Readable.from([data]))).toBe('uploaded');
    expect(Buffer.concat(got).equals(data)).toBe(true);
  });

  it('falls back to the upload session a refused mount opened', async () => {
    const pool = make();
    const data = Buffer.from('hello');
    const digest = sha256Digest(data);
    pool.intercept({ path: `/v2/a/b/blobs/${digest}`, method: 'HEAD' }).reply(404, '');
    pool
      .intercept({
        path: `/v2/a/b/blobs/uploads/?mount=${encodeURIComponent(digest)}&from=x%2Fy`,
        method: 'POST',
      })
      .reply(202, '', { headers: { location: 'https://reg.test/sess?x=1' } });
    pool.intercept({ path: `/sess?x=1&digest=${encodeURIComponent(digest)}`, method: 'PUT' }).reply(201, '');
    expect(
      await client.pushBlob(ref, digest, data.length, () => Readable.from([data]), { mountFrom: ['x/y'] }),
    ).toBe('uploaded');
  });

  it('uses http for plainHttp and insecure hosts', () => {
    make({ insecure: ['127.0.0.1:5000'] });
    expect(client.baseUrl('127.0.0.1:5000')).toBe('http://127.0.0.1:5000');
    expect(client.baseUrl('ghcr.io')).toBe('https://ghcr.io');
    expect(new RegistryClient({ plainHttp: true }).baseUrl('ghcr.io')).toBe('http://ghcr.io');
  });
});

describe('parseContentRange', () => {
  it('parses and rejects', () => {
    expect(parseContentRange('bytes 0-9/100')).toEqual({ start: 0, end: 9, size: 100 });
    expect(parseContentRange('bytes 5-9/*')).toEqual({ start: 5, end: 9, size: undefined });
    expect(parseContentRange('bytes 9-5/100')).toBeUndefined();
    expect(parseContentRange('0-9')).toBeUndefined();
    expect(parseContentRange(undefined)).toBeUndefined();
  });
});
