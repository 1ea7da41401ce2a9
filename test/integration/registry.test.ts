import { Readable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RegistryClient } from '../../src/registry/client.js';
import { MediaTypes } from '../../src/registry/media-types.js';
import { parseReference } from '../../src/registry/reference.js';
import { requireRegistry, startProxy, startRegistry, type TestRegistry } from '../helpers/registry.js';

import { blob, catchErr, client, collect, pushImage, sha } from '../helpers/registry-client.js';

const req = requireRegistry(['none', 'basic', 'bearer']);

describe.skipIf(req.skip)('registry client against docker-registry (no auth)', () => {
  let reg: TestRegistry;
  let c: RegistryClient;
  beforeAll(async () => {
    reg = await startRegistry();
    c = client({ retries: 2 });
  });
  afterAll(async () => {
    await c?.close();
    await reg?.stop();
  });

  it('pushes a blob monolithically, then finds it exists', async () => {
    const ref = parseReference(`${reg.host}/push/mono:1`);
    const b = blob(100_000);
    const progress: number[] = [];
    expect(
      await c.pushBlob(ref, b.digest, b.data.length, () => Readable.from([b.data]), {
        onProgress: (n) => progress.push(n),
      }),
    ).toBe('uploaded');
    expect(progress.at(-1)).toBe(b.data.length);
    expect(await c.headBlob(ref, b.digest)).toBe(b.data.length);
    expect(await c.pushBlob(ref, b.digest, b.data.length, () => Readable.from([b.data]))).toBe('exists');
    const got = await c.getBlob(ref, b.digest);
    expect(got.size).toBe(b.data.length);
    expect((await collect(got.stream)).equals(b.data)).toBe(true);
  });

  it('pushes a blob in chunks following Location headers', async () => {
    const ref = parseReference(`${reg.host}/push/chunked:1`);
    const b = blob(10_000);
    const chunked = client({ uploadChunkSize: 4096 });
    try {
      // Source chunks that do not line up with the upload chunks.
      const parts = [b.data.subarray(0, 1000), b.data.subarray(1000, 7777), b.data.subarray(7777)];
      const progress: number[] = [];
      expect(
        await chunked.pushBlob(ref, b.digest, b.data.length, () => Readable.from(parts), {
          onProgress: (n) => progress.push(n),
        }),
      ).toBe('uploaded');
      expect(progress).toEqual([4096, 8192, 10_000]);
      expect((await collect((await c.getBlob(ref, b.digest)).stream)).equals(b.data)).toBe(true);
    } finally {
      await chunked.close();
    }
  });

  it('refuses a data source that does not match the announced size', async () => {
    const ref = parseReference(`${reg.host}/push/short:1`);
    const b = blob(5000);
    const err = await catchErr(
      c.pushBlob(ref, b.digest, b.data.length, () => Readable.from([b.data.subarray(0, 4000)])),
    );
    expect(err.code).toBe('INVALID_ARGUMENT');
    expect(await c.headBlob(ref, b.digest)).toBeUndefined();
  });

  it('mounts a blob from another repository, and uploads when the source lacks it', async () => {
    const a = parseReference(`${reg.host}/mount/src:1`);
    const bRef = parseReference(`${reg.host}/mount/dst:1`);
    const b = blob(20_000);
    await c.pushBlob(a, b.digest, b.data.length, () => Readable.from([b.data]));
    let opened = 0;
    const open = () => {
      opened++;
      return Readable.from([b.data]);
    };
    expect(await c.pushBlob(bRef, b.digest, b.data.length, open, { mountFrom: ['mount/src'] })).toBe(
      'mounted',
    );
    expect(opened).toBe(0);
    expect(await c.headBlob(bRef, b.digest)).toBe(b.data.length);

    const other = blob(1234);
    const cRef = parseReference(`${reg.host}/mount/third:1`);
    const openOther = () => {
      opened++;
      return Readable.from([other.data]);
    };
    expect(
      await c.pushBlob(cRef, other.digest, other.data.length, openOther, {
        mountFrom: ['mount/nothing', 'mount/src'],
      }),
    ).toBe('uploaded');
    expect(opened).toBe(1);
    expect(await c.headBlob(cRef, other.digest)).toBe(other.data.length);
  });

  it('puts and gets OCI and Docker manifests by tag and by digest', async () => {
    for (const docker of [false, true]) {
      const img = await pushImage(c, reg.host, 'manifests/app', docker ? 'docker' : 'oci', docker);
      expect(img.digest).toBe(sha(img.bytes));
      const byTag = await c.getManifest(img.ref);
      expect(byTag).toEqual({ mediaType: img.mediaType, digest: img.digest, bytes: img.bytes });
      const byDigest = await c.getManifest(img.ref.withDigest(img.digest));
      expect(byDigest.bytes.equals(img.bytes)).toBe(true);
      expect(await c.headManifest(img.ref)).toEqual({
        digest: img.digest,
        mediaType: img.mediaType,
        size: img.bytes.length,
      });
    }
    // An index pointing at both.
    const oci = await c.headManifest(parseReference(`${reg.host}/manifests/app:oci`));
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.ociIndex,
        manifests: [
          {
            mediaType: MediaTypes.ociManifest,
            digest: oci!.digest,
            size: oci!.size,
            platform: { os: 'linux', architecture: 'amd64' },
          },
        ],
      }),
    );
    const ref = parseReference(`${reg.host}/manifests/app:multi`);
    await c.putManifest(ref, index, MediaTypes.ociIndex);
    expect((await c.getManifest(ref)).mediaType).toBe(MediaTypes.ociIndex);
  });

  it('reports missing manifests and blobs as NOT_FOUND naming them', async () => {
    const ref = parseReference(`${reg.host}/missing/repo:nope`);
    expect(await c.headManifest(ref)).toBeUndefined();
    const err = await catchErr(c.getManifest(ref));
    expect(err.code).toBe('NOT_FOUND');
    expect(err.message).toContain(`${reg.host}/missing/repo:nope`);
    const d = blob(10).digest;
    expect(await c.headBlob(ref, d)).toBeUndefined();
    const err2 = await catchErr(c.getBlob(ref, d));
    expect(err2.code).toBe('NOT_FOUND');
    expect(err2.message).toContain(d);
    const err3 = await catchErr(c.getBlobRange(ref, d, 0, 10));
    expect(err3.code).toBe('NOT_FOUND');
  });

  it('rejects a manifest push with invalid content with the registry message', async () => {
    const ref = parseReference(`${reg.host}/manifests/bad:1`);
    const bytes = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.ociManifest,
        config: { mediaType: MediaTypes.ociConfig, digest: blob(5).digest, size: 5 },
        layers: [],
      }),
    );
    const err = await catchErr(c.putManifest(ref, bytes, MediaTypes.ociManifest));
    expect(err.code).toBe('REGISTRY');
    expect(err.message).toMatch(/MANIFEST_BLOB_UNKNOWN|blob unknown/i);
  });

  it('reads ranges and suffixes', async () => {
    const ref = parseReference(`${reg.host}/ranges/r:1`);
    const b = blob(70_000);
    await c.pushBlob(ref, b.digest, b.data.length, () => Readable.from([b.data]));
    expect((await c.getBlobRange(ref, b.digest, 0, 1)).equals(b.data.subarray(0, 1))).toBe(true);
    expect(
      (await c.getBlobRange(ref, b.digest, 12_345, 40_000)).equals(b.data.subarray(12_345, 52_345)),
    ).toBe(true);
    expect((await c.getBlobRange(ref, b.digest, 69_990, 10)).equals(b.data.subarray(69_990))).toBe(true);
    expect((await c.getBlobRange(ref, b.digest, 5, 0)).length).toBe(0);
    expect((await catchErr(c.getBlobRange(ref, b.digest, 69_990, 11))).code).toBe('CORRUPT');
    expect((await catchErr(c.getBlobRange(ref, b.digest, 80_000, 10))).code).toBe('CORRUPT');

    const tail = await c.getBlobTail(ref, b.digest, 100);
    expect(tail.size).toBe(b.data.length);
    expect(tail.data.equals(b.data.subarray(-100))).toBe(true);
    const all = await c.getBlobTail(ref, b.digest, 1_000_000);
    expect(all.size).toBe(b.data.length);
    expect(all.data.equals(b.data)).toBe(true);

    const rr = c.rangeReader(ref, b.digest);
    expect(rr.size).toBeUndefined();
    expect((await rr.readTail(16)).data.equals(b.data.subarray(-16))).toBe(true);
    expect(rr.size).toBe(b.data.length);
    expect((await rr.read(100, 200)).equals(b.data.subarray(100, 300))).toBe(true);
  });

  it('handles a server that ignores Range by slicing the full answer', async () => {
    const ref0 = parseReference(`${reg.host}/ranges/ignored:1`);
    const b = blob(50_000);
    await c.pushBlob(ref0, b.digest, b.data.length, () => Readable.from([b.data]));
    const proxy = await startProxy(reg.host, (r) => {
      delete r.headers.range;
      return undefined;
    });
    const pc = client();
    try {
      const ref = parseReference(`${proxy.host}/ranges/ignored:1`);
      expect((await pc.getBlobRange(ref, b.digest, 1000, 2000)).equals(b.data.subarray(1000, 3000))).toBe(
        true,
      );
      const tail = await pc.getBlobTail(ref, b.digest, 64);
      expect(tail).toEqual({ data: b.data.subarray(-64), size: b.data.length });
      expect((await catchErr(pc.getBlobRange(ref, b.digest, 49_000, 2000))).code).toBe('CORRUPT');
    } finally {
      await pc.close();
      await proxy.stop();
    }
  });

  it('fails a blob stream whose bytes do not match the digest', async () => {
    const ref0 = parseReference(`${reg.host}/verify/v:1`);
    const b = blob(1000);
    await c.pushBlob(ref0, b.digest, b.data.length, () => Readable.from([b.data]));
    // Serve the blob under another digest by asking the proxy to rewrite the path.
    const wrong = blob(1000).digest;
    const proxy = await startProxy(reg.host, (r) => {
      r.url = r.url!.replace(wrong, b.digest);
      return undefined;
    });
    const pc = client();
    try {
      const { stream } = await pc.getBlob(parseReference(`${proxy.host}/verify/v:1`), wrong);
      const err = await catchErr(collect(stream));
      expect(err.code).toBe('DIGEST_MISMATCH');
    } finally {
      await pc.close();
      await proxy.stop();
    }
  });

  it('retries 5xx answers with backoff, and gives up with a clear error', async () => {
    const ref0 = parseReference(`${reg.host}/flaky/f:1`);
    const b = blob(4000);
    await c.pushBlob(ref0, b.digest, b.data.length, () => Readable.from([b.data]));

    let failures = 0;
    const flaky = await startProxy(reg.host, (r) => {
      if (r.url?.includes('/blobs/') && failures < 2) {
        failures++;
        return { status: 500, body: '{"errors":[{"code":"UNKNOWN","message":"flaky backend"}]}' };
      }
      return undefined;
    });
    const broken = await startProxy(reg.host, () => ({ status: 503, body: 'down for maintenance' }));
    const pc = client({ retries: 2 });
    try {
      const data = await pc.getBlobRange(parseReference(`${flaky.host}/flaky/f:1`), b.digest, 10, 100);
      expect(data.equals(b.data.subarray(10, 110))).toBe(true);
      expect(failures).toBe(2);

      const err = await catchErr(
        pc.getBlobRange(parseReference(`${broken.host}/flaky/f:1`), b.digest, 10, 100),
      );
      expect(err.code).toBe('REGISTRY');
      expect(err.message).toContain(broken.host);
      expect(err.message).toContain('503');
      expect(err.message).toContain('after 3 attempts');
      expect(broken.requests).toBe(3);
    } finally {
      await pc.close();
      await flaky.stop();
      await broken.stop();
    }
  });

  it('restarts a failed upload from a fresh open()', async () => {
    let failed = false;
    const proxy = await startProxy(reg.host, (r) => {
      if (r.method === 'PUT' && r.url?.includes('/blobs/uploads/') && !failed) {
        failed = true;
        return { status: 500, body: 'boom' };
      }
      return undefined;
    });
    const pc = client({ retries: 2 });
    try {
      const ref = parseReference(`${proxy.host}/flaky/upload:1`);
      const b = blob(30_000);
      let opened = 0;
      const res = await pc.pushBlob(ref, b.digest, b.data.length, () => {
        opened++;
        return Readable.from([b.data]);
      });
      expect(res).toBe('uploaded');
      expect(failed).toBe(true);
      expect(opened).toBe(2);
      expect(await c.headBlob(parseReference(`${reg.host}/flaky/upload:1`), b.digest)).toBe(b.data.length);
    } finally {
      await pc.close();
      await proxy.stop();
    }
  });

  it('times out on a registry that never answers, and honours abort signals', async () => {
    // A server that accepts and never answers.
    const { createServer } = await import('node:http');
    const silent = createServer(() => undefined);
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    const host = `127.0.0.1:${(silent.address() as { port: number }).port}`;
    const pc = client({ timeoutMs: 200, retries: 1 });
    try {
      const ref = parseReference(`${host}/x/y:1`);
      const err = await catchErr(pc.getManifest(ref));
      expect(err.code).toBe('TIMEOUT');
      expect(err.message).toContain(host);
      const ac = new AbortController();
      const p = client({ timeoutMs: 10_000 }).getManifest(ref, { signal: ac.signal });
      setTimeout(() => ac.abort(), 50);
      expect((await catchErr(p)).code).toBe('ABORTED');
    } finally {
      silent.closeAllConnections();
      silent.close();
      await pc.close();
    }
  });

  it('reports an unreachable registry as a NETWORK error naming the host', async () => {
    const { freePort } = await import('../helpers/registry.js');
    const port = await freePort();
    const pc = client({ retries: 1 });
    try {
      const err = await catchErr(pc.headManifest(parseReference(`127.0.0.1:${port}/x/y:1`)));
      expect(err.code).toBe('NETWORK');
      expect(err.message).toContain(`127.0.0.1:${port}`);
    } finally {
      await pc.close();
    }
  });
});
