/** The registry client against docker-registry with basic and bearer authentication. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DockerConfigCredentials, StaticCredentials } from '../../src/registry/credentials.js';
import { parseReference } from '../../src/registry/reference.js';
import {
  dockerConfigFor,
  requireRegistry,
  startProxy,
  startRegistry,
  type TestRegistry,
} from '../helpers/registry.js';

import { blob, catchErr, client, collect, pushImage } from '../helpers/registry-client.js';

const req = requireRegistry(['none', 'basic', 'bearer']);

describe.skipIf(req.skip)('registry client with basic auth', () => {
  let reg: TestRegistry;
  let dir: string;
  beforeAll(async () => {
    reg = await startRegistry({ auth: 'basic', username: 'alice', password: 'wonderland' });
    dir = mkdtempSync(join(tmpdir(), 'dfnode-dockercfg-'));
  });
  afterAll(async () => {
    await reg?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('pushes and pulls with credentials from a docker config file', async () => {
    const path = dockerConfigFor(reg.host, 'alice', 'wonderland', dir);
    const c = client({ credentials: new DockerConfigCredentials({ path }) });
    try {
      const img = await pushImage(c, reg.host, 'basic/app', 'v1');
      expect((await c.getManifest(img.ref)).digest).toBe(img.digest);
      expect(
        (await c.getBlobRange(img.ref, img.layer.digest, 5, 10)).equals(img.layer.data.subarray(5, 15)),
      ).toBe(true);
    } finally {
      await c.close();
    }
  });

  it('fails with UNAUTHORIZED and a clear message on a wrong password or no credentials', async () => {
    const ref = parseReference(`${reg.host}/basic/app:v1`);
    const bad = client({ credentials: new StaticCredentials({ username: 'alice', password: 'nope' }) });
    const none = client();
    try {
      const err = await catchErr(bad.getManifest(ref));
      expect(err.code).toBe('UNAUTHORIZED');
      expect(err.message).toContain(`authentication to ${reg.host} failed for basic/app`);
      expect(err.message).toContain(`docker login ${reg.host}`);
      const err2 = await catchErr(none.getManifest(ref));
      expect(err2.code).toBe('UNAUTHORIZED');
      expect(err2.message).toContain(`docker login ${reg.host}`);
    } finally {
      await bad.close();
      await none.close();
    }
  });

  it('follows blob redirects to another host without sending the registry credentials', async () => {
    const c = client({ credentials: new StaticCredentials({ username: 'alice', password: 'wonderland' }) });
    const seenAuth: (string | undefined)[] = [];
    const basic = `Basic ${Buffer.from('alice:wonderland').toString('base64')}`;
    // "Storage": another origin that serves blobs with its own access to the registry.
    const storage = await startProxy(reg.host, (r) => {
      seenAuth.push(r.headers.authorization);
      r.headers.authorization = basic;
      r.url = r.url!.replace('/storage', '');
      return undefined;
    });
    const front = await startProxy(reg.host, (r) => {
      if (r.method === 'GET' && r.url?.includes('/blobs/sha256:')) {
        return { status: 307, headers: { location: `${storage.url}/storage${r.url}` } };
      }
      return undefined;
    });
    try {
      const img = await pushImage(c, front.host, 'basic/redirect', 'v1');
      const { stream } = await c.getBlob(img.ref, img.layer.digest);
      expect((await collect(stream)).equals(img.layer.data)).toBe(true);
      expect(
        (await c.getBlobRange(img.ref, img.layer.digest, 100, 50)).equals(img.layer.data.subarray(100, 150)),
      ).toBe(true);
      expect(seenAuth.length).toBeGreaterThanOrEqual(2);
      expect(seenAuth.every((a) => a === undefined)).toBe(true);
    } finally {
      await c.close();
      await front.stop();
      await storage.stop();
    }
  });
});

describe.skipIf(req.skip)('registry client with bearer tokens', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry({
      auth: 'bearer',
      username: 'bob',
      password: 'builder',
      tokenField: 'access_token',
    });
  });
  afterAll(async () => {
    await reg?.stop();
  });

  it('gets tokens, caches them per scope, and mounts across repositories', async () => {
    const c = client({ credentials: new StaticCredentials({ username: 'bob', password: 'builder' }) });
    try {
      const img = await pushImage(c, reg.host, 'bearer/app', 'v1');
      expect((await c.getManifest(img.ref)).bytes.equals(img.bytes)).toBe(true);
      const before = reg.tokenRequests;
      for (let i = 0; i < 5; i++) {
        expect((await c.getBlobRange(img.ref, img.layer.digest, i, 1))[0]).toBe(img.layer.data[i]);
      }
      // One token for the pull scope, then none for the following reads.
      expect(reg.tokenRequests - before).toBeLessThanOrEqual(1);
      const dst = parseReference(`${reg.host}/bearer/other:v1`);
      expect(
        await c.pushBlob(
          dst,
          img.layer.digest,
          img.layer.data.length,
          () => Readable.from([img.layer.data]),
          {
            mountFrom: ['bearer/app'],
          },
        ),
      ).toBe('mounted');
    } finally {
      await c.close();
    }
  });

  it('fails with UNAUTHORIZED on a wrong password and without credentials', async () => {
    const ref = parseReference(`${reg.host}/bearer/app:v1`);
    const bad = client({ credentials: new StaticCredentials({ username: 'bob', password: 'wrong' }) });
    const anon = client();
    try {
      const err = await catchErr(bad.getManifest(ref));
      expect(err.code).toBe('UNAUTHORIZED');
      expect(err.message).toContain(`authentication to ${reg.host} failed for bearer/app`);
      const err2 = await catchErr(anon.getManifest(ref));
      expect(err2.code).toBe('UNAUTHORIZED');
      expect(err2.message).toContain('no credentials were found: docker login');
    } finally {
      await bad.close();
      await anon.close();
    }
  });
});

describe.skipIf(req.skip)('registry client with bearer tokens and limited rights', () => {
  let reg: TestRegistry;
  beforeAll(async () => {
    reg = await startRegistry({ auth: 'bearer', pullOnly: true, anonymousPull: true, tokenField: 'token' });
  });
  afterAll(async () => {
    await reg?.stop();
  });

  it('pulls anonymously and explains a refused push', async () => {
    const anon = client();
    const user = client({
      credentials: new StaticCredentials({ username: reg.username!, password: reg.password! }),
    });
    try {
      const ref = parseReference(`${reg.host}/ro/app:v1`);
      expect(await anon.headManifest(ref)).toBeUndefined();
      const b = blob(100);
      const err = await catchErr(user.pushBlob(ref, b.digest, b.data.length, () => Readable.from([b.data])));
      expect(err.code).toBe('UNAUTHORIZED');
      expect(err.message).toContain(`${reg.host} denied push access to ro/app`);
    } finally {
      await anon.close();
      await user.close();
    }
  });
});
