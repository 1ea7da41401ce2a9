/**
 * The mirror's manifests on disk (manifest-store.ts): verified on read (corrupt, truncated and misplaced files
 * removed, never answered), bounded with least recently used eviction, keyed by credential; and a mirror
 * restarted on the same directory answering them while its registry is down, to the same credential only.
 */
import { createHash } from 'node:crypto';
import { appendFile, copyFile, readdir, readFile, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import type { CachedManifest } from '../../src/mirror/manifest-cache.js';
import { ManifestStore } from '../../src/mirror/manifest-store.js';
import { MirrorServer } from '../../src/mirror/mirror-server.js';
import { Upstream } from '../../src/mirror/upstream.js';
import { httpAnswer as get } from '../helpers/raw-http.js';
import { tempDir } from '../helpers/temp.js';

function manifest(text: string, storedAt = 1000): CachedManifest {
  const body = Buffer.from(text);
  const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
  return { body, contentType: 'application/vnd.oci.image.manifest.v1+json', digest, storedAt };
}

const keyOf = (cred: string) => `reg.example/team/app|1|accept|${cred}`;
const fileOf = (key: string) => createHash('sha256').update(key).digest('hex');

describe('ManifestStore', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let dir: string;
  beforeEach(async () => {
    tmp = await tempDir('dfms-');
    dir = join(tmp.dir, 'mirror-manifests');
  });
  afterEach(async () => {
    await tmp.cleanup();
  });

  it('answers a manifest under its own key only, and not beyond the age asked for', async () => {
    const s = new ManifestStore({ dir, maxBytes: 1 << 20 });
    await s.init();
    const m = manifest('{"schemaVersion":2,"a":1}');
    await s.put(keyOf('alice'), m);
    expect(await s.get(keyOf('alice'), 10_000, 2000)).toEqual(m);
    // another credential's (or no credential's) key: nothing, though the same manifest is on disk
    expect(await s.get(keyOf('bob'), 10_000, 2000)).toBeUndefined();
    expect(await s.get(keyOf('-'), 10_000, 2000)).toBeUndefined();
    expect(await s.get(keyOf('alice'), 500, 2000)).toBeUndefined();
    // a new store on the same directory (a restart) finds it
    const again = new ManifestStore({ dir, maxBytes: 1 << 20 });
    await again.init();
    expect(await again.get(keyOf('alice'), 10_000, 2000)).toEqual(m);
  });

  it('removes corrupt, truncated and misplaced files instead of answering them', async () => {
    const s = new ManifestStore({ dir, maxBytes: 1 << 20 });
    await s.init();
    const keys = ['flip', 'cut', 'moved', 'header'].map(keyOf);
    for (const k of keys) await s.put(k, manifest(`{"schemaVersion":2,"k":${JSON.stringify(k)}}`));
    const path = (k: string) => join(dir, fileOf(k));
    // a body byte changed: the digest check fails
    const flipped = await readFile(path(keys[0]!));
    flipped[flipped.length - 3]! ^= 1;
    await writeFile(path(keys[0]!), flipped);
    // cut short (a crash during a copy, a full disk)
    await truncate(path(keys[1]!), (await stat(path(keys[1]!))).size - 5);
    // a whole, valid file under another key's name: its own key does not match
    await copyFile(path(keys[3]!), path(keys[2]!));
    // the header garbled
    const garbled = await readFile(path(keys[3]!));
    garbled.write('{"key":1', 'dfnode-manifest 1\n'.length);
    await writeFile(path(keys[3]!), garbled);
    const restarted = new ManifestStore({ dir, maxBytes: 1 << 20 });
    await restarted.init();
    for (const k of keys) expect(await restarted.get(k, 10_000, 2000)).toBeUndefined();
    expect(await readdir(dir)).toEqual([]);
    expect(restarted.totalBytes).toBe(0);
  });

  it('keeps at most maxBytes, evicting the least recently used, also across a restart', async () => {
    const one = manifest(`{"schemaVersion":2,"pad":"${'x'.repeat(1000)}"}`);
    const per = (await (async () => {
      const probe = new ManifestStore({ dir: join(tmp.dir, 'probe'), maxBytes: 1 << 20 });
      await probe.init();
      await probe.put(keyOf('z'), one);
      return probe.totalBytes;
    })())!;
    const s = new ManifestStore({ dir, maxBytes: 3 * per });
    await s.init();
    for (const k of ['a', 'b', 'c']) await s.put(keyOf(k), one);
    expect(await s.get(keyOf('a'), 10_000, 2000)).toBeDefined(); // a used: b is now the oldest
    await s.put(keyOf('d'), one);
    expect(s.size).toBe(3);
    expect(await s.get(keyOf('b'), 10_000, 2000)).toBeUndefined();
    for (const k of ['a', 'c', 'd']) expect(await s.get(keyOf(k), 10_000, 2000)).toBeDefined();
    expect((await readdir(dir)).sort()).toEqual(['a', 'c', 'd'].map((k) => fileOf(keyOf(k))).sort());
    // after a restart with a smaller cap, the least recently used by file time go first; temporary
    // files a killed process left are removed
    await utimes(join(dir, fileOf(keyOf('c'))), new Date(1e12), new Date(1e12));
    await writeFile(join(dir, `${fileOf(keyOf('e'))}.abc.tmp`), 'half a write');
    const small = new ManifestStore({ dir, maxBytes: 2 * per });
    await small.init();
    expect(await small.get(keyOf('c'), 10_000, 2000)).toBeUndefined();
    expect((await readdir(dir)).length).toBe(2);
    expect(small.totalBytes).toBe(2 * per);
  });

  it('removes a file longer than any it writes', async () => {
    const s = new ManifestStore({ dir, maxBytes: 1 << 20, maxManifestBytes: 100 });
    await s.init();
    await s.put(keyOf('a'), manifest('{"schemaVersion":2}'));
    expect(await s.get(keyOf('a'), 10_000, 2000)).toBeDefined();
    await appendFile(join(dir, fileOf(keyOf('a'))), Buffer.alloc(64 << 10, 0x20));
    expect(await s.get(keyOf('a'), 10_000, 2000)).toBeUndefined();
    expect(await readdir(dir)).toEqual([]);
  });

  it('does not store a manifest over its size limit', async () => {
    const s = new ManifestStore({ dir, maxBytes: 1 << 20, maxManifestBytes: 100 });
    await s.init();
    await s.put(keyOf('a'), manifest(`{"pad":"${'x'.repeat(200)}"}`));
    expect(s.size).toBe(0);
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('a restarted mirror with its registry down', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let upstream: Server;
  const body = Buffer.from('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}');
  const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;

  beforeEach(async () => {
    tmp = await tempDir('dfms-m-');
    // a registry that answers the manifest to alice's token only
    upstream = createServer((q, s) => {
      if (q.headers.authorization !== 'Bearer alice') {
        s.writeHead(401, { 'www-authenticate': 'Bearer realm="http://127.0.0.1:1/token"' });
        return s.end();
      }
      s.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
      s.end(body);
    });
    await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', () => r()));
  });
  afterEach(async () => {
    upstream.closeAllConnections();
    await new Promise<void>((r) => upstream.close(() => r()));
    await tmp.cleanup();
  });

  const startMirror = async (registry: string) => {
    const m = new MirrorServer({
      listen: '127.0.0.1:0',
      upstream: new Upstream({ plainHttp: true }),
      defaultRegistry: registry,
      manifestStore: new ManifestStore({ dir: join(tmp.dir, 'mm'), maxBytes: 1 << 20 }),
      logger: silentLogger,
    });
    await m.start();
    return m;
  };

  it('answers the manifest from disk to the credential that fetched it, to no other', async () => {
    const registry = `127.0.0.1:${(upstream.address() as AddressInfo).port}`;
    const path = '/v2/team/app/manifests/1';
    const first = await startMirror(registry);
    try {
      expect((await get(first.address, path)).status).toBe(401);
      const ok = await get(first.address, path, { authorization: 'Bearer alice' });
      expect(ok.status).toBe(200);
      expect(ok.headers['docker-content-digest']).toBe(digest);
    } finally {
      await first.close();
    }
    // the registry goes away; a new mirror (a restarted node) on the same directory
    upstream.closeAllConnections();
    await new Promise<void>((r) => upstream.close(() => r()));
    const second = await startMirror(registry);
    try {
      const stale = await get(second.address, path, { authorization: 'Bearer alice' });
      expect(stale.status).toBe(200);
      expect(stale.body.equals(body)).toBe(true);
      expect(stale.headers['docker-content-digest']).toBe(digest);
      expect(second.counters.staleManifests).toBe(1);
      for (const auth of [{}, { authorization: 'Bearer bob' }] as Record<string, string>[]) {
        const other = await get(second.address, path, auth);
        expect(other.status).toBe(502);
        expect(other.body.includes(body)).toBe(false);
      }
      expect(second.counters.staleManifests).toBe(1);
    } finally {
      await second.close();
    }
  });
});
