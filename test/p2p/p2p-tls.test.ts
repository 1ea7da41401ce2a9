/**
 * Mutual TLS for P2P traffic (p2p.tls), on loopback with throw-away CAs made by openssl: the block server
 * and the tracker answer members (certificate from the cluster CA, and the cluster token) and refuse hosts
 * without a certificate, with one from another CA, or speaking plain HTTP; bad TLS configuration stops a
 * node or seed at start with a CONFIG error.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { loadConfig, type ConfigInput } from '../../src/config.js';
import { DfError } from '../../src/errors.js';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { Seed } from '../../src/p2p/seed.js';
import { loadTls, type TlsMaterial } from '../../src/p2p/tls.js';
import { HttpTracker } from '../../src/p2p/tracker-http.js';
import { serveTracker, TrackerClient } from '../../src/p2p/tracker-service.js';
import { TrackerState } from '../../src/p2p/tracker-state.js';
import { isSourceUnavailable } from '../../src/fetch/types.js';
import type { RegistryClient } from '../../src/registry/client.js';
import { runCli } from '../helpers/cli.js';
import { requireTools } from '../helpers/require.js';
import { makeTestPki, type HostTls, type TestPki } from '../helpers/tls-certs.js';

const req = requireTools(['openssl']);
const TOKEN = 'tls-test-token';
const DIGEST = 'sha256:' + 'ab'.repeat(32);
const DATA = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7) & 0xff));

const provider: BlobProvider = {
  get: async (digest) =>
    digest === DIGEST ? { size: DATA.length, read: async (o, l) => DATA.subarray(o, o + l) } : undefined,
};

/** Files as they are, without loadTls's checks: what a host of another cluster would present. */
async function raw(h: HostTls): Promise<TlsMaterial> {
  return { cert: await readFile(h.cert), key: await readFile(h.key), ca: await readFile(h.ca) };
}

const signal = () => AbortSignal.timeout(10_000);

/** A refused handshake: a DfError that names TLS (UNAUTHORIZED when this side saw why, else NETWORK). */
const refusedTls = {
  asymmetricMatch: (e: unknown) =>
    e instanceof DfError && (e.code === 'UNAUTHORIZED' || e.code === 'NETWORK') && /TLS/.test(e.message),
  toString: () => 'a DfError naming TLS',
};

describe.skipIf(req.skip)('P2P mutual TLS', () => {
  let dir: string;
  let pki: TestPki;
  let member: TlsMaterial;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dfnode-tls-'));
    pki = await makeTestPki(dir);
    member = loadTls(pki.member)!;
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  describe('configuration', () => {
    const cfg = (tls: Partial<HostTls>, env: NodeJS.ProcessEnv = {}) =>
      loadConfig({ env, flags: { p2p: { tls, clusterToken: TOKEN, listen: '127.0.0.1:0' } } });

    it('is off by default and loads all three files when set', () => {
      expect(loadTls(loadConfig({ env: {} }).p2p.tls)).toBeUndefined();
      const t = loadTls(cfg(pki.member).p2p.tls)!;
      expect(t.cert.toString()).toContain('BEGIN CERTIFICATE');
      expect(t.key.toString()).toContain('PRIVATE KEY');
      expect(t.ca.toString()).toContain('BEGIN CERTIFICATE');
    });

    it('comes from DFNODE_P2P_TLS_* like every other key', () => {
      const c = loadConfig({
        env: {
          DFNODE_P2P_TLS_CERT: pki.member.cert,
          DFNODE_P2P_TLS_KEY: pki.member.key,
          DFNODE_P2P_TLS_CA: pki.ca,
        },
      });
      expect(c.p2p.tls).toEqual(pki.member);
    });

    it('refuses a certificate without key or CA, naming what is missing', () => {
      expect(() => cfg({ cert: pki.member.cert })).toThrow(
        expect.objectContaining({
          code: 'CONFIG',
          message: expect.stringMatching(/p2p\.tls.*missing key, ca/),
        }),
      );
      expect(() => loadConfig({ env: { DFNODE_P2P_TLS_CA: pki.ca } })).toThrow(
        expect.objectContaining({ code: 'CONFIG', message: expect.stringMatching(/missing cert, key/) }),
      );
      // loadTls checks it too, for a Config made without the schema
      expect(() => loadTls({ cert: pki.member.cert, key: pki.member.key, ca: '' })).toThrow(
        expect.objectContaining({ code: 'CONFIG', message: expect.stringMatching(/missing p2p\.tls\.ca/) }),
      );
    });

    it('fails with CONFIG on an unreadable file, a file that is not PEM, a wrong key or a foreign CA', async () => {
      const missing = join(dir, 'no-such.key');
      expect(() => loadTls({ ...pki.member, key: missing })).toThrow(
        expect.objectContaining({
          code: 'CONFIG',
          message: expect.stringContaining(`cannot read p2p.tls.key ${missing}`),
        }),
      );
      const notPem = join(dir, 'not-pem.crt');
      await writeFile(notPem, 'just some text\n');
      expect(() => loadTls({ ...pki.member, cert: notPem })).toThrow(
        expect.objectContaining({
          code: 'CONFIG',
          message: expect.stringContaining(`p2p.tls.cert ${notPem} is not a PEM file`),
        }),
      );
      expect(() => loadTls({ ...pki.member, ca: pki.member.key })).toThrow(
        expect.objectContaining({
          code: 'CONFIG',
          message: expect.stringContaining('holds no PEM certificate'),
        }),
      );
      expect(() => loadTls({ ...pki.member, key: pki.member2.key })).toThrow(
        expect.objectContaining({
          code: 'CONFIG',
          message: expect.stringContaining('is not the key of p2p.tls.cert'),
        }),
      );
      expect(() => loadTls(pki.intruder)).toThrow(
        expect.objectContaining({
          code: 'CONFIG',
          message: expect.stringContaining('is not signed by a CA in p2p.tls.ca'),
        }),
      );
    });

    it('stops a node and a seed at construction, and the CLI with exit code 2', async () => {
      const bad = cfg({ ...pki.member, key: join(dir, 'gone.key') });
      expect(() => new P2pNode({ config: bad })).toThrow(expect.objectContaining({ code: 'CONFIG' }));
      expect(() => new Seed({ config: bad, client: {} as RegistryClient })).toThrow(
        expect.objectContaining({
          code: 'CONFIG',
          message: expect.stringContaining('cannot read p2p.tls.key'),
        }),
      );
      const r = await runCli('dfnode', [
        'seed',
        '--cache-dir',
        join(dir, 'cli-cache'),
        '--state-dir',
        join(dir, 'cli-state'),
        '--cluster-token',
        TOKEN,
        '--p2p-listen',
        '127.0.0.1:0',
        '--p2p-tls-cert',
        pki.member.cert,
      ]);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/p2p\.tls.*missing key, ca/);
    });
  });

  describe('block server', () => {
    let server: BlockServer;
    let addr: string;
    const clients: HttpBlockClient[] = [];
    const client = (tls: TlsMaterial | undefined, token = TOKEN) => {
      const c = new HttpBlockClient(token, undefined, '', tls);
      clients.push(c);
      return c;
    };

    beforeAll(async () => {
      server = new BlockServer({ provider, clusterToken: TOKEN, tls: member });
      addr = await server.listen('127.0.0.1:0');
    });
    afterAll(async () => {
      for (const c of clients) await c.close();
      await server.close();
    });

    it('serves a member over HTTPS although its certificate names no address (the chain is the proof)', async () => {
      // Node's default check would refuse this certificate for 127.0.0.1
      expect(new X509Certificate(await readFile(pki.member.cert)).checkIP('127.0.0.1')).toBeUndefined();
      const got = await client(loadTls(pki.member2)).get(addr, DIGEST, 100, 1000, signal());
      expect(got.equals(DATA.subarray(100, 1100))).toBe(true);
    });

    it('still requires the cluster token from a member', async () => {
      const before = server.counters.unauthorized;
      await expect(
        client(loadTls(pki.member2), 'wrong').get(addr, DIGEST, 0, 16, signal()),
      ).rejects.toMatchObject({
        code: 'UNAUTHORIZED',
        message: expect.stringMatching(/401.*check p2p\.clusterToken/),
      });
      expect(server.counters.unauthorized).toBe(before + 1);
    });

    it('refuses a client without a certificate, with the token', async () => {
      const before = server.counters.unauthorized;
      const noCert = { ca: member.ca } as TlsMaterial;
      await expect(client(noCert).get(addr, DIGEST, 0, 16, signal())).rejects.toEqual(refusedTls);
      await vi.waitFor(() => expect(server.counters.unauthorized).toBe(before + 1), { timeout: 5000 });
    });

    it('refuses a certificate from another CA, with the token', async () => {
      const before = server.counters.unauthorized;
      await expect(client(await raw(pki.intruder)).get(addr, DIGEST, 0, 16, signal())).rejects.toEqual(
        refusedTls,
      );
      await vi.waitFor(() => expect(server.counters.unauthorized).toBe(before + 1), { timeout: 5000 });
    });

    it('refuses plain HTTP', async () => {
      const before = { ...server.counters };
      await expect(client(undefined).get(addr, DIGEST, 0, 16, signal())).rejects.toMatchObject({
        code: 'NETWORK',
      });
      await vi.waitFor(() => expect(server.counters.unauthorized).toBe(before.unauthorized + 1), {
        timeout: 5000,
      });
      expect(server.counters.served).toBe(before.served);
    });

    it('a member does not trust a server with a certificate from another CA', async () => {
      const other = new BlockServer({ provider, clusterToken: TOKEN, tls: loadTls(pki.foreign) });
      const a = await other.listen('127.0.0.1:0');
      try {
        await expect(client(member).get(a, DIGEST, 0, 16, signal())).rejects.toMatchObject({
          code: 'UNAUTHORIZED',
          message: expect.stringMatching(/TLS handshake failed.*check p2p\.tls/),
        });
        expect(other.counters.served).toBe(0);
      } finally {
        await other.close();
      }
    });

    it('a TLS client of a plain-HTTP server fails with a TLS error', async () => {
      const plain = new BlockServer({ provider, clusterToken: TOKEN });
      const a = await plain.listen('127.0.0.1:0');
      try {
        await expect(client(member).get(a, DIGEST, 0, 16, signal())).rejects.toMatchObject({
          code: 'UNAUTHORIZED',
          message: expect.stringContaining('TLS handshake failed'),
        });
        expect(plain.counters.served).toBe(0);
      } finally {
        await plain.close();
      }
    });
  });

  describe('tracker', () => {
    let tracker: { address: string; stop(): Promise<void> };
    const clients: TrackerClient[] = [];
    const tc = (tls: TlsMaterial | undefined, token = TOKEN) => {
      const c = new TrackerClient(tracker.address, token, 5000, tls);
      clients.push(c);
      return c;
    };

    beforeAll(async () => {
      const state = new TrackerState({ peerTtlMs: 30_000, announceIntervalMs: 1000 });
      tracker = await serveTracker(state, '127.0.0.1:0', TOKEN, member);
    });
    afterAll(async () => {
      for (const c of clients) c.close();
      await tracker.stop();
    });

    it('answers a member over mutual TLS', async () => {
      const a = tc(loadTls(pki.member2));
      await a.announce({
        blob: DIGEST,
        units: 8,
        peer_id: 'm2',
        address: '127.0.0.1:1',
        full: true,
        bitmap: Buffer.from([0xff]),
      });
      const r = await tc(member).lookup({ blob: DIGEST, peer_id: 'm1', want: [0, 1] });
      expect(r.units).toBe(8);
      expect(r.holders.map((h) => h.peer_id)).toEqual(['m2']);
    });

    it('still requires the cluster token from a member', async () => {
      await expect(
        tc(member, 'wrong').lookup({ blob: DIGEST, peer_id: 'x', want: [] }),
      ).rejects.toMatchObject({
        code: 'UNAUTHORIZED',
        message: expect.stringContaining('check p2p.clusterToken'),
      });
    });

    it('refuses a certificate from another CA and a client without TLS', async () => {
      await expect(
        tc(await raw(pki.intruder)).lookup({ blob: DIGEST, peer_id: 'x', want: [] }),
      ).rejects.toEqual(refusedTls);
      await expect(tc(undefined).lookup({ blob: DIGEST, peer_id: 'x', want: [] })).rejects.toMatchObject({
        code: 'NETWORK',
      });
    });

    it('a member does not trust a tracker with a certificate from another CA', async () => {
      const state = new TrackerState({ peerTtlMs: 30_000, announceIntervalMs: 1000 });
      const other = await serveTracker(state, '127.0.0.1:0', TOKEN, loadTls(pki.foreign));
      const c = new TrackerClient(other.address, TOKEN, 5000, member);
      try {
        await expect(c.lookup({ blob: DIGEST, peer_id: 'x', want: [] })).rejects.toMatchObject({
          code: 'UNAUTHORIZED',
          message: expect.stringMatching(/TLS handshake failed.*check p2p\.tls/),
        });
      } finally {
        c.close();
        await other.stop();
      }
    });
  });

  describe('wiring from the config', () => {
    const config = (tls: HostTls, extra: ConfigInput = {}) =>
      loadConfig({
        env: {},
        flags: {
          ...extra,
          p2p: { tls, clusterToken: TOKEN, listen: '127.0.0.1:0', seeds: ['127.0.0.1:1'] },
        },
      });

    it('a seed serves blocks and its tracker over mutual TLS only', async () => {
      const seed = new Seed({
        config: config(pki.member, { cache: { dir: join(dir, 'seed-cache') } }),
        client: {} as RegistryClient,
      });
      const a = await seed.start();
      const ok = new HttpBlockClient(TOKEN, undefined, '', loadTls(pki.member2));
      const plain = new HttpBlockClient(TOKEN);
      const t = new TrackerClient(a.tracker, TOKEN, 5000, loadTls(pki.member2));
      const tPlain = new TrackerClient(a.tracker, TOKEN, 5000);
      const noFallback = () => {
        throw new Error('fell back to gRPC');
      };
      // the tracker over HTTP on the block port: the same TLS as the blocks
      const h = new HttpTracker(a.blocks, TOKEN, 5000, loadTls(pki.member2), noFallback);
      const hPlain = new HttpTracker(a.blocks, TOKEN, 5000, undefined, noFallback);
      const hIntruder = new HttpTracker(a.blocks, TOKEN, 5000, await raw(pki.intruder), noFallback);
      try {
        expect((await h.lookup({ blob: DIGEST, peer_id: 'x', want: [] })).holders).toEqual([]);
        await expect(hPlain.lookup({ blob: DIGEST, peer_id: 'x', want: [] })).rejects.toMatchObject({
          code: 'NETWORK',
        });
        await expect(hIntruder.lookup({ blob: DIGEST, peer_id: 'x', want: [] })).rejects.toEqual(refusedTls);
        // through TLS and the token: the seed answers (it has no such blob and no hint to fetch it)
        await expect(ok.get(a.blocks, DIGEST, 0, 16, signal())).rejects.toSatisfy(isSourceUnavailable);
        await expect(plain.get(a.blocks, DIGEST, 0, 16, signal())).rejects.toMatchObject({ code: 'NETWORK' });
        expect((await t.lookup({ blob: DIGEST, peer_id: 'x', want: [] })).holders).toEqual([]);
        await expect(tPlain.lookup({ blob: DIGEST, peer_id: 'x', want: [] })).rejects.toMatchObject({
          code: 'NETWORK',
        });
      } finally {
        for (const x of [h, hPlain, hIntruder]) x.close();
        t.close();
        tPlain.close();
        await ok.close();
        await plain.close();
        await seed.close();
      }
    });

    it('a node serves its blocks over mutual TLS only', async () => {
      const node = new P2pNode({ config: config(pki.member) });
      const addr = await node.start();
      const ok = new HttpBlockClient(TOKEN, undefined, '', loadTls(pki.member2));
      const intruder = new HttpBlockClient(TOKEN, undefined, '', await raw(pki.intruder));
      try {
        // a blob the node does not hold: 404 after the handshake and the token
        await expect(ok.get(addr, DIGEST, 0, 16, signal())).rejects.toSatisfy(isSourceUnavailable);
        await expect(intruder.get(addr, DIGEST, 0, 16, signal())).rejects.toEqual(refusedTls);
        await vi.waitFor(() => expect(node.server.counters.unauthorized).toBe(1), { timeout: 5000 });
      } finally {
        await ok.close();
        await intruder.close();
        await node.close();
      }
    });
  });
});
