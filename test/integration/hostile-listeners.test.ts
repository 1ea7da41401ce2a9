/**
 * Every listener meets hostile input: `dfnode run` (FUSE manager and P2P on, metrics on) and `dfnode seed`
 * get malformed requests on each of their listeners — block servers, tracker, snapshotter gRPC socket, FUSE
 * manager control socket, metrics — from a holder of the cluster token: bad URLs, bad and huge ranges, garbage
 * bytes, truncated and half-open requests, lying announces, a flood of idle connections from one address.
 * Afterwards every process is alive, its memory did not balloon, and a file of a mounted layer still reads
 * correctly. Real processes over loopback and unix sockets, real FUSE mounts. Needs root, /dev/fuse, docker-registry, skopeo and umoci.
 */
import { readFileSync } from 'node:fs';
import { mkdir, readFile, readdir } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FuseManagerClient } from '../../src/fusemanager/client.js';
import { fuseManagerPaths } from '../../src/fusemanager/protocol.js';
import { trackerAddress } from '../../src/p2p/rendezvous.js';
import { HttpTracker } from '../../src/p2p/tracker-http.js';
import { TrackerClient } from '../../src/p2p/tracker-service.js';
import { startDfnodeRun, type DfnodeRun } from '../helpers/containerd.js';
import { startSeedProc, type SeedProc } from '../helpers/dfnode-proc.js';
import {
  dfbLayers,
  nodeTempDir,
  pushAndConvert,
  requireNodeMounts,
  unmountAllUnder,
  type DfbManifestLayer,
  type ImageSet,
} from '../helpers/node.js';
import { freePort } from '../helpers/registry.js';

const req = requireNodeMounts(['docker-registry']);
const TOKEN = 'hostile-listeners-token';
const MiB = 1024 * 1024;

/** Resident memory of a process (bytes), from /proc. */
function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Connections the seed keeps from one address (p2p.maxConnectionsPerHost in its environment). */
const FLOOD_KEPT = 100;

/** Opens an idle connection from `from`; true when the server kept it (a refused one closes at once). */
function keptConnection(to: { host: string; port: number }, from: string, keep: Socket[]): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ ...to, localAddress: from });
    keep.push(s);
    s.on('error', () => resolve(false));
    s.on('close', () => resolve(false));
    s.on('connect', () => setTimeout(() => resolve(!s.destroyed && !s.readableEnded), 1000));
  });
}

/**
 * Sends raw bytes to a TCP address or a unix socket and returns what came back (or '' when the peer closed
 * without answering) within `ms`. `keepOpen`: leave the connection half-open (the caller closes it later).
 */
function raw(
  to: { host: string; port: number } | { path: string },
  bytes: string | Buffer,
  opts: { ms?: number; keepOpen?: Socket[] } = {},
): Promise<string> {
  return new Promise((resolve) => {
    const s = connect(to as never);
    let got = '';
    const done = () => {
      clearTimeout(timer);
      if (!opts.keepOpen) s.destroy();
      resolve(got);
    };
    const timer = setTimeout(done, opts.ms ?? 2000);
    s.on('data', (d) => {
      got += d.toString('latin1');
      if (got.length > 64 * 1024) done();
    });
    s.on('error', done);
    s.on('close', done);
    s.on('connect', () => {
      s.write(bytes);
      if (opts.keepOpen) {
        opts.keepOpen.push(s);
        clearTimeout(timer);
        resolve('');
      }
    });
  });
}

const hostPort = (addr: string) => {
  const i = addr.lastIndexOf(':');
  return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)) };
};

/** HTTP requests a listener must answer with an error status (or close), never by dying. */
function badHttp(digest: string, withToken: boolean): string[] {
  const tok = withToken ? `x-dfnode-cluster-token: ${TOKEN}\r\n` : '';
  const get = (path: string, extra = '') =>
    `GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${tok}${extra}\r\n`;
  return [
    get('//'),
    get('/blobs/'),
    get('/%zz%zz'),
    get('http://[::1'),
    get(`/blobs/${digest}?offset=-1&length=10`),
    get(`/blobs/${digest}?offset=0&length=${2 ** 53}`),
    get(`/blobs/${digest}?offset=NaN&length=1e400`),
    get(`/blobs/${digest}?offset=0&length=${4096 * MiB}`),
    get(`/blobs/${digest}`, 'Range: bytes=9-1\r\n'),
    get(`/blobs/${digest}`, 'Range: bytes=0-99999999999999999999\r\n'),
    get(`/blobs/sha256:${'0'.repeat(64)}?offset=0&length=10&repo=evil.example/x&size=999999999999`),
    get(`/blobs/${digest}?offset=0&length=10`, `X-Big: ${'a'.repeat(100_000)}\r\n`),
    `POST /blobs/${digest} HTTP/1.1\r\nHost: x\r\n${tok}Content-Length: 5\r\n\r\nhello`,
    `GET /blobs/${digest}?offset=0&length=10 HTTP/1.1\r\nHost: x\r\n${tok}Content-Length: 100\r\n\r\nshort`,
    'NOT HTTP AT ALL\r\n\r\n',
    '\x00\x01\x02\x03garbage\xff\xfe',
  ];
}

describe.skipIf(req.skip)('hostile input to every listener of a node and a seed', () => {
  let tmp: { dir: string; cleanup: () => Promise<void> };
  let images: ImageSet;
  let ref: string;
  let layers: DfbManifestLayer[];
  let seed: SeedProc;
  let run: DfnodeRun;
  let managerPid = 0;
  let nodeP2p = '';
  let metrics = '';
  const open: Socket[] = [];

  beforeAll(async () => {
    tmp = await nodeTempDir('hostile-');
    images = await pushAndConvert(['busybox'], tmp.dir);
    ref = images.dfb.busybox!;
    layers = await dfbLayers(images.reg.url, ref);
    seed = await startSeedProc(tmp.dir, 'seed', ['--cluster-token', TOKEN], {
      DFNODE_P2P_MAX_CONNECTIONS_PER_HOST: String(FLOOD_KEPT),
    });
    nodeP2p = `127.0.0.1:${await freePort()}`;
    metrics = `127.0.0.1:${await freePort()}`;
    run = await startDfnodeRun({
      dir: join(tmp.dir, 'node'),
      fuseManager: true,
      args: [
        '--seeds',
        seed.addr,
        '--cluster-token',
        TOKEN,
        '--p2p-listen',
        nodeP2p,
        '--metrics-address',
        metrics,
      ],
    });
    managerPid = Number(readFileSync(fuseManagerPaths(run.stateDir).pid, 'utf8').trim());
    expect(alive(managerPid)).toBe(true);
  }, 600_000);

  afterAll(async () => {
    for (const s of open) s.destroy();
    await run?.stop().catch(() => undefined);
    if (managerPid && alive(managerPid)) {
      process.kill(managerPid, 'SIGTERM');
      for (let i = 0; i < 100 && alive(managerPid); i++) await new Promise((r) => setTimeout(r, 100));
      if (alive(managerPid)) process.kill(managerPid, 'SIGKILL');
    }
    await seed?.proc.stop();
    if (tmp) await unmountAllUnder(tmp.dir).catch(() => undefined);
    await images?.reg.stop();
    await tmp?.cleanup();
  });

  it(
    'answers malformed requests, keeps running, stays bounded, and a mounted file still reads',
    { timeout: 300_000 },
    async () => {
      const layer = layers[layers.length - 1]!;
      const fm = new FuseManagerClient(fuseManagerPaths(run.stateDir).socket);
      const mountpoint = join(run.snapshotterRoot, 'hostile-test', 'mnt');
      await mkdir(mountpoint, { recursive: true });
      await fm.mount({ imageRef: ref, layer: { digest: layer.digest, size: layer.size }, mountpoint });
      // a file to read before and after
      const find = async (dir: string): Promise<string | undefined> => {
        for (const e of await readdir(dir, { withFileTypes: true })) {
          const p = join(dir, e.name);
          if (e.isFile()) return p;
          if (e.isDirectory()) {
            const f = await find(p);
            if (f) return f;
          }
        }
        return undefined;
      };
      const file = await find(mountpoint);
      expect(file).toBeDefined();
      const before = await readFile(file!);
      const pids = { run: run.pid, manager: managerPid, seed: seed.proc.child.pid! };
      const rssBefore = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, rss(pid)]));

      // block servers of the seed and the node, with and without the token
      for (const addr of [seed.addr, nodeP2p])
        for (const withToken of [true, false])
          await Promise.all(badHttp(layer.digest, withToken).map((r) => raw(hostPort(addr), r)));
      // half-open and slow clients: headers never finished
      for (const addr of [seed.addr, nodeP2p, metrics])
        for (let i = 0; i < 20; i++) await raw(hostPort(addr), 'GET /blobs/', { keepOpen: open });
      // metrics endpoint
      await Promise.all(badHttp(layer.digest, false).map((r) => raw(hostPort(metrics), r)));
      // a flood of idle connections from one address (127.0.0.9 stands for another host): the seed keeps
      // p2p.maxConnectionsPerHost of them, closes the rest on arrival and says so; it answers the node (from
      // 127.0.0.1) below
      const flood = await Promise.all(
        Array.from({ length: 1500 }, () => keptConnection(hostPort(seed.addr), '127.0.0.9', open)),
      );
      expect(flood.filter(Boolean).length).toBe(FLOOD_KEPT);
      expect(seed.proc.err()).toMatch(/refused connections from one address/);
      // tracker: garbage on its port, and announces that lie about sizes and ids
      const tracker = trackerAddress(seed.addr);
      await raw(hostPort(tracker), '\x00\x00\x00\x00\x04garbage-not-http2');
      const tc = new TrackerClient(tracker, TOKEN, 5000);
      const lies = [
        { blob: layer.digest, units: 2 ** 32 - 1, peer_id: 'liar', address: '127.0.0.1:1', full: true },
        { blob: layer.digest, units: 4, peer_id: 'x'.repeat(100_000), address: '127.0.0.1:1', full: true },
        {
          blob: 'not-a-digest',
          units: 4,
          peer_id: 'liar',
          address: '???',
          full: true,
          bitmap: new Uint8Array(1),
        },
        {
          blob: layer.digest,
          units: 1000,
          peer_id: 'liar2',
          address: '127.0.0.1:2',
          full: false,
          added: Array.from({ length: 50_000 }, (_, i) => i * 1000),
          failed_peers: Array.from({ length: 50_000 }, (_, i) => `p${i}`),
        },
      ];
      // the same lies over gRPC and over HTTP on the seed's block port, plus garbage bodies there
      const th = new HttpTracker(seed.addr, TOKEN, 5000, undefined, () => {
        throw new Error('the seed has an HTTP tracker');
      });
      for (const t of [tc, th]) {
        for (const m of lies) await t.announce(m).catch(() => undefined);
        await t
          .lookup({ blob: layer.digest, peer_id: 'liar', want: Array.from({ length: 100_000 }, (_, i) => i) })
          .catch(() => undefined);
        t.close();
      }
      const answers: string[] = [];
      for (const r of [
        `POST /tracker/v1/Announce HTTP/1.1\r\nHost: x\r\nx-dfnode-cluster-token: ${TOKEN}\r\nContent-Length: 8\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff`,
        `POST /tracker/v1/Lookup HTTP/1.1\r\nHost: x\r\nx-dfnode-cluster-token: ${TOKEN}\r\nContent-Length: ${64 * MiB}\r\n\r\n${'x'.repeat(64 * 1024)}`,
        `POST /tracker/v1/Lookup HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd`,
      ])
        answers.push(await raw(hostPort(seed.addr), r));
      expect(answers.map((a) => a.slice(0, 12))).toEqual(['HTTP/1.1 400', 'HTTP/1.1 413', 'HTTP/1.1 401']);
      // snapshotter gRPC socket and FUSE manager control socket: garbage, bad JSON, bad paths, huge bodies
      await raw(
        { path: run.socket },
        'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\x08\x00\x00\x00\x00\x00garbage',
      );
      await raw({ path: run.socket }, Buffer.alloc(100_000, 0xff));
      const fmSock = { path: fuseManagerPaths(run.stateDir).socket };
      for (const r of [
        'POST /mount HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n\r\n{not json',
        'POST /mount HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]',
        `POST /mount HTTP/1.1\r\nHost: x\r\nContent-Length: ${4 * MiB}\r\n\r\n${'x'.repeat(64 * 1024)}`,
        'GET //../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n',
        'DELETE /mounts HTTP/1.1\r\nHost: x\r\n\r\n',
        '\xff\xfe\xfd',
      ])
        await raw(fmSock, r);
      for (let i = 0; i < 10; i++) await raw(fmSock, 'POST /mount HTTP/1.1\r\n', { keepOpen: open });
      await expect(
        fm.mount({
          imageRef: ref,
          layer: { digest: layer.digest, size: layer.size },
          mountpoint: '/etc/cron.d',
        }),
      ).rejects.toThrow();

      // everything still runs and answers
      for (const [name, pid] of Object.entries(pids))
        expect(alive(pid), `${name} (pid ${pid}) is alive`).toBe(true);
      expect((await fm.health()).ok).toBe(true);
      const ok = await fetch(`http://${metrics}/metrics`);
      expect(ok.status).toBe(200);
      expect((await readFile(file!)).equals(before)).toBe(true);
      // memory: no request made a process hold tens of MiB more (a lying length or units would cost GiBs)
      for (const [name, pid] of Object.entries(pids))
        expect(rss(pid) - rssBefore[name]!, `${name} RSS growth`).toBeLessThan(256 * MiB);
      await fm.release(mountpoint);
    },
  );
});
