/**
 * ManifestRelay (src/mirror/manifest-relay.ts) against a small registry on loopback: one registry request
 * for every request of the same key meanwhile and within the TTL, never an answer across credentials, the
 * newest kept copy while the registry is down, a `via` (the cluster's seed) asked first and distrusted
 * when it sends another digest; and the seed's wire answer (seed-manifests.ts) for what nodes send it.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { isBusy } from '../../src/fetch/types.js';
import {
  ManifestRelay,
  manifestEntry,
  type ManifestAnswer,
  type ManifestQuery,
} from '../../src/mirror/manifest-relay.js';
import { seedManifestAnswer } from '../../src/mirror/seed-manifests.js';
import { Upstream } from '../../src/mirror/upstream.js';
import { ManifestStore } from '../../src/mirror/manifest-store.js';
import { tempDir } from '../helpers/temp.js';
import {
  MANIFEST_AGE_HEADER,
  MANIFEST_FROM_HEADER,
  MANIFEST_STALE_HEADER,
} from '../../src/p2p/manifest-request.js';

const MANIFEST = Buffer.from('{"schemaVersion":2,"layers":[]}');
const DIGEST = `sha256:${createHash('sha256').update(MANIFEST).digest('hex')}`;
const ALICE = 'Bearer alice';

/** A registry that answers the manifest to ALICE (and to anyone when `open`), counting requests. */
async function startRegistry(opts: { open?: boolean; delayMs?: number } = {}) {
  const seen: { url: string; auth?: string }[] = [];
  const server: Server = createServer((req: IncomingMessage, res: ServerResponse) => {
    seen.push({ url: req.url ?? '', auth: req.headers.authorization });
    const answer = () => {
      if (!opts.open && req.headers.authorization !== ALICE) {
        res.writeHead(401, { 'www-authenticate': 'Bearer realm="http://auth/token"', 'content-length': 2 });
        return res.end('{}');
      }
      if (!/^\/v2\/app\/manifests\/(v1|sha256:[0-9a-f]{64})$/.test(decodeURIComponent(req.url ?? ''))) {
        res.writeHead(404, { 'content-length': 0 });
        return res.end();
      }
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
      res.end(MANIFEST);
    };
    if (opts.delayMs) setTimeout(answer, opts.delayMs);
    else answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    host,
    seen,
    stop: () =>
      new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      }),
  };
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function setup(opts: { open?: boolean; delayMs?: number; via?: ManifestRelay['get'] } = {}) {
  const reg = await startRegistry(opts);
  const upstream = new Upstream({ plainHttp: true, timeoutMs: 5_000 });
  let clock = 1_000_000;
  const relay = new ManifestRelay({
    upstream,
    ttlMs: 5_000,
    staleMs: 60_000,
    now: () => clock,
    ...(opts.via && { via: opts.via }),
  });
  cleanups.push(
    () => reg.stop(),
    () => upstream.close(),
    () => relay.close(),
  );
  const q = (authorization?: string, reference = 'v1'): ManifestQuery => ({
    registry: reg.host,
    repository: 'app',
    reference,
    ...(authorization !== undefined && { authorization }),
    accept: 'application/vnd.oci.image.manifest.v1+json',
  });
  return { reg, relay, q, tick: (ms: number) => (clock += ms), now: () => clock };
}

const signal = () => AbortSignal.timeout(10_000);
const manifestOf = (a: ManifestAnswer) => {
  if (a.kind !== 'manifest') throw new Error(`not a manifest: ${a.status}`);
  return a;
};

describe('ManifestRelay', () => {
  it('sends one registry request for the requests of one key at once and within the TTL', async () => {
    const { reg, relay, q, tick } = await setup({ delayMs: 100 });
    const answers = await Promise.all(Array.from({ length: 8 }, () => relay.get(q(ALICE), signal())));
    for (const a of answers) expect(manifestOf(a).manifest.digest).toBe(DIGEST);
    expect(reg.seen.length).toBe(1);
    expect(relay.counters).toMatchObject({ registry: 1, joined: 7 });
    tick(4_000);
    expect(manifestOf(await relay.get(q(ALICE), signal())).from).toBe('memory');
    tick(2_000);
    expect(manifestOf(await relay.get(q(ALICE), signal())).from).toBe('registry');
    expect(reg.seen.length).toBe(2);
  });

  it('never answers one credential what another fetched; relays the refusal with its challenge', async () => {
    const { reg, relay, q } = await setup();
    manifestOf(await relay.get(q(ALICE), signal()));
    const anon = await relay.get(q(), signal());
    expect(anon.kind).toBe('refused');
    if (anon.kind !== 'refused') return;
    expect(anon.status).toBe(401);
    expect(anon.headers['www-authenticate']).toContain('realm=');
    const mallory = await relay.get(q('Bearer mallory'), signal());
    expect(mallory.kind === 'refused' && mallory.status).toBe(401);
    expect(reg.seen.map((s) => s.auth)).toEqual([ALICE, undefined, 'Bearer mallory']);
  });

  it('answers the kept copy while the registry is down, for the same credential and up to staleMs', async () => {
    const { reg, relay, q, tick } = await setup({ open: true });
    manifestOf(await relay.get(q(ALICE), signal()));
    await reg.stop();
    tick(30_000);
    const stale = manifestOf(await relay.get(q(ALICE), signal()));
    expect(stale.from).toBe('stale');
    expect(stale.manifest.body.equals(MANIFEST)).toBe(true);
    await expect(relay.get(q(), signal())).rejects.toMatchObject({ code: 'NETWORK' });
    tick(31_000);
    await expect(relay.get(q(ALICE), signal())).rejects.toMatchObject({ code: 'NETWORK' });
  });

  it('a restarted relay answers a tag and its digest from disk while the registry is down', async () => {
    const { dir, cleanup } = await tempDir('dfnode-relay-store-');
    cleanups.push(cleanup);
    const { reg, q } = await setup({ open: true });
    const store = () => new ManifestStore({ dir, maxBytes: 1 << 20 });
    const upstream = new Upstream({ plainHttp: true, timeoutMs: 5_000 });
    cleanups.push(() => upstream.close());
    const withStore = new ManifestRelay({ upstream, store: store() });
    await withStore.init();
    manifestOf(await withStore.get(q(ALICE), signal()));
    // the digest, asked right after, came from memory: still on disk for a restart
    manifestOf(await withStore.get(q(ALICE, DIGEST), signal()));
    expect(reg.seen.length).toBe(1);
    withStore.close();
    await reg.stop();
    const restarted = new ManifestRelay({ upstream, store: store() });
    await restarted.init();
    cleanups.push(() => restarted.close());
    // the digest first: it must come from its own file on disk
    for (const ref of [DIGEST, 'v1']) {
      const a = manifestOf(await restarted.get(q(ALICE, ref), signal()));
      expect(a.from).toBe('stale');
      expect(a.manifest.body.equals(MANIFEST)).toBe(true);
    }
  });

  it('takes Accept headers that list the same media types in another order for one key', async () => {
    const { reg, relay, q } = await setup({ open: true });
    const types = ['application/vnd.oci.image.manifest.v1+json', 'application/vnd.oci.image.index.v1+json'];
    manifestOf(await relay.get({ ...q(ALICE), accept: types.join(', ') }, signal()));
    const again = manifestOf(await relay.get({ ...q(ALICE), accept: ` ${types[1]},${types[0]} ` }, signal()));
    expect(again.from).toBe('memory');
    // another set of types is another question to the registry
    manifestOf(await relay.get({ ...q(ALICE), accept: types[0] }, signal()));
    expect(reg.seen.length).toBe(2);
  });

  it("keeps a tag's answer under its digest: the engine's GET by digest after a HEAD of the tag asks nothing", async () => {
    const { reg, relay, q, tick } = await setup({ open: true });
    manifestOf(await relay.get(q(ALICE), signal()));
    // another Accept (containerd's fetch of a digest sends the descriptor's media type): the same content
    const byDigest = manifestOf(await relay.get({ ...q(ALICE, DIGEST), accept: '*/*' }, signal()));
    expect(byDigest).toMatchObject({ from: 'memory' });
    expect(reg.seen.length).toBe(1);
    // content that cannot change stays fresh past the tag's TTL (digestTtlMs, 5 min by default)...
    tick(60_000);
    expect(manifestOf(await relay.get(q(ALICE, DIGEST), signal())).from).toBe('memory');
    expect(reg.seen.length).toBe(1);
    // ...for the credential that fetched it only
    const other = await relay.get(q('Bearer mallory', DIGEST), signal());
    expect(other.kind === 'manifest' && other.from).toBe('registry');
    tick(250_000);
    expect(manifestOf(await relay.get(q(ALICE, DIGEST), signal())).from).toBe('registry');
    expect(reg.seen.length).toBe(3);
  });

  it('answers the copy fetched without credentials to any credential while the repository is public', async () => {
    const o = { open: true };
    const { reg, relay, q, tick } = await setup(o);
    expect(manifestOf(await relay.get(q(), signal())).from).toBe('registry');
    // an engine with a token of its own: the public copy, no registry request
    const own = manifestOf(await relay.get(q('Bearer mallory'), signal()));
    expect(own).toMatchObject({ from: 'memory', public: true });
    expect(reg.seen.length).toBe(1);
    // past the TTL the copy is fetched again, without credentials, for whoever asks
    tick(6_000);
    expect(manifestOf(await relay.get(q('Bearer bob'), signal()))).toMatchObject({ public: true });
    expect(reg.seen.map((s) => s.auth)).toEqual([undefined, undefined]);
    // no longer public: refused without credentials, asked with them, and then straight with them
    o.open = false;
    tick(6_000);
    expect(manifestOf(await relay.get(q(ALICE), signal())).public).toBeUndefined();
    expect(reg.seen.map((s) => s.auth).slice(2)).toEqual([undefined, ALICE]);
    tick(6_000);
    manifestOf(await relay.get(q(ALICE), signal()));
    expect(reg.seen.map((s) => s.auth).slice(4)).toEqual([ALICE]);
  });

  it('answers a copy fetched without credentials to any credential while the registry is down', async () => {
    const { reg, relay, q, tick } = await setup({ open: true });
    manifestOf(await relay.get(q(), signal()));
    await reg.stop();
    tick(30_000);
    const stale = manifestOf(await relay.get(q('Bearer never-seen'), signal()));
    expect(stale).toMatchObject({ from: 'stale', public: true });
    expect(stale.manifest.body.equals(MANIFEST)).toBe(true);
    tick(31_000);
    await expect(relay.get(q('Bearer never-seen'), signal())).rejects.toMatchObject({ code: 'NETWORK' });
  });

  it("asks `via` first and keeps its answer; a stale one only when the registry can't answer either", async () => {
    let viaCalls = 0;
    let viaFrom: 'seed' | 'stale' = 'seed';
    let clockOf = () => 0;
    const via = (query: ManifestQuery) => {
      viaCalls++;
      const m = manifestEntry(MANIFEST, 'application/json', query, clockOf() - 1_000, 'seed');
      return Promise.resolve<ManifestAnswer>({ kind: 'manifest', manifest: m, from: viaFrom });
    };
    const { reg, relay, q, tick, now } = await setup({ open: true, via });
    clockOf = now;
    const a = manifestOf(await relay.get(q(), signal()));
    expect(a.from).toBe('seed');
    expect(a.manifest.storedAt).toBe(now() - 1_000);
    expect(reg.seen.length).toBe(0);
    // within the TTL from memory, without asking the seed
    expect(manifestOf(await relay.get(q(), signal())).from).toBe('memory');
    expect(viaCalls).toBe(1);
    // the seed's registry is down (a stale copy): this node asks the registry itself, which answers
    tick(10_000);
    viaFrom = 'stale';
    expect(manifestOf(await relay.get(q(), signal())).from).toBe('registry');
    expect(reg.seen.length).toBe(1);
    // both down: the newest copy (the seed's, a second old, is newer than this node's)
    await reg.stop();
    tick(10_000);
    const s = manifestOf(await relay.get(q(), signal()));
    expect(s.from).toBe('stale');
    expect(s.manifest.storedAt).toBe(now() - 1_000);
  });

  it('refuses a manifest asked for by digest that a source answers with other content', async () => {
    const other = Buffer.from('{"schemaVersion":2,"layers":[{"digest":"x"}]}');
    const via = (query: ManifestQuery) =>
      Promise.resolve().then(() => ({
        kind: 'manifest' as const,
        manifest: manifestEntry(other, undefined, query, 0, 'seed'),
        from: 'seed' as const,
      }));
    const { reg, relay, q } = await setup({ open: true, via });
    // the seed's answer fails its check: the registry is asked and its (right) content answered
    const a = manifestOf(await relay.get(q(undefined, DIGEST), signal()));
    expect(a.from).toBe('registry');
    expect(a.manifest.body.equals(MANIFEST)).toBe(true);
    expect(relay.counters.mismatches).toBe(1);
    expect(reg.seen.length).toBe(1);
    expect(() => manifestEntry(other, undefined, q(undefined, DIGEST), 0, 'registry')).toThrow(/digest/);
  });

  it('asks the registry when `via` does not answer in time', async () => {
    const reg = await startRegistry({ open: true });
    const upstream = new Upstream({ plainHttp: true });
    const relay = new ManifestRelay({ upstream, via: () => new Promise(() => undefined), viaTimeoutMs: 200 });
    cleanups.push(
      () => reg.stop(),
      () => upstream.close(),
      () => relay.close(),
    );
    const a = await relay.get({ registry: reg.host, repository: 'app', reference: 'v1' }, signal());
    expect(manifestOf(a).from).toBe('registry');
  });

  it('refuses more different manifests at once than maxInflight (busy)', async () => {
    const reg = await startRegistry({ open: true, delayMs: 300 });
    const upstream = new Upstream({ plainHttp: true });
    const relay = new ManifestRelay({ upstream, maxInflight: 2 });
    cleanups.push(
      () => reg.stop(),
      () => upstream.close(),
      () => relay.close(),
    );
    const q = (reference: string) => ({ registry: reg.host, repository: 'app', reference });
    const first = [relay.get(q('v1'), signal()), relay.get(q('v2'), signal())];
    const third = await relay.get(q('v3'), signal()).catch((e: unknown) => e);
    expect(isBusy(third)).toBe(true);
    await Promise.all(first);
  });
});

describe("a seed's manifest answer (seed-manifests.ts)", () => {
  it('answers the manifest with its age, the registry refusal marked as such, and refuses what it must', async () => {
    const { reg, relay, tick } = await setup();
    const answer = seedManifestAnswer(
      relay,
      (r) => r === reg.host,
      () => 1_000_000 + 2_500,
    );
    const target = `/v2/app/manifests/v1?ns=${reg.host}`;
    const ok = await answer(target, { authorization: ALICE }, signal());
    expect(ok.status).toBe(200);
    expect(ok.body.equals(MANIFEST)).toBe(true);
    expect(ok.headers['docker-content-digest']).toBe(DIGEST);
    expect(ok.headers[MANIFEST_AGE_HEADER]).toBe('2500');
    expect(ok.headers[MANIFEST_STALE_HEADER]).toBeUndefined();
    const refused = await answer(target, {}, signal());
    expect(refused.status).toBe(401);
    expect(refused.headers[MANIFEST_FROM_HEADER]).toBe('registry');
    expect(refused.headers['www-authenticate']).toContain('realm=');
    // not a registry this seed fetches from: its own refusal, the registry never asked
    const before = reg.seen.length;
    const elsewhere = await answer(
      '/v2/app/manifests/v1?ns=registry.example.com',
      { authorization: ALICE },
      signal(),
    );
    expect(elsewhere.status).toBe(403);
    expect(elsewhere.headers[MANIFEST_FROM_HEADER]).toBeUndefined();
    for (const bad of [
      '/v2/app/blobs/sha256:' + '0'.repeat(64),
      '/v2/../x/manifests/v1',
      '/v2/app/manifests/v1',
      '/x',
    ])
      expect([400, 404]).toContain(
        (await answer(`${bad}${bad.includes('?') ? '' : ''}`, {}, signal())).status,
      );
    expect(reg.seen.length).toBe(before);
    // the registry down: the kept copy, marked stale; nothing for another credential
    await reg.stop();
    tick(10_000);
    const stale = await answer(target, { authorization: ALICE }, signal());
    expect(stale.status).toBe(200);
    expect(stale.headers[MANIFEST_STALE_HEADER]).toBe('1');
    expect((await answer(target, { authorization: 'Bearer mallory' }, signal())).status).toBe(502);
  });
});
