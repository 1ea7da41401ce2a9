/**
 * The FUSE manager's control socket, over a real unix socket with a runtime double (no FUSE): the socket is
 * root's alone (0600 whatever the umask), layers are mounted only under the node's own directories, and
 * malformed or hostile requests get an error status while the server keeps serving.
 */
import { mkdir, mkdtemp, rm, stat, symlink } from 'node:fs/promises';
import { request } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NodeRuntime } from '../../src/daemon/node-runtime.js';
import { FuseManagerClient } from '../../src/fusemanager/client.js';
import { fuseManagerPaths } from '../../src/fusemanager/protocol.js';
import { FuseManagerServer } from '../../src/fusemanager/server.js';
import { LayerStore } from '../../src/layer/layer-store.js';
import { silentLogger } from '../../src/log.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

/** Probe mounts asked of the runtime double (POST /probe). */
const probed: string[] = [];

/** TOC reads asked of the runtime double (POST /warm): image, digest and TOC offset hint. */
const tocReads: Array<{ image: string; digest: string; tocOffset?: number }> = [];

/** The part of a NodeRuntime the server touches when mounting: records the mountpoints asked for. */
function runtimeDouble(mounted: string[]): NodeRuntime {
  return {
    mountLayer: async (_ref: unknown, _layer: unknown, mountpoint: string) => {
      mounted.push(mountpoint);
      return { fs: { toc: undefined } };
    },
    releaseLayer: async () => undefined,
    probeMount: async (mountpoint: string) => void probed.push(mountpoint),
    layers: {
      readToc: async (layer: { digest: string; tocOffset?: number }, ref: { toString(): string }) => {
        tocReads.push({ image: ref.toString(), digest: layer.digest, tocOffset: layer.tocOffset });
        throw new Error('registry unreachable in this test');
      },
      // the real one, over the readToc above
      warmTocs: LayerStore.prototype.warmTocs,
      logger: silentLogger,
    },
  } as unknown as NodeRuntime;
}

/** One raw HTTP exchange on the socket: status and body text (the server may close right after). */
function raw(
  socket: string,
  method: string,
  path: string,
  body?: string | Buffer,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath: socket,
        method,
        path,
        headers: body ? { 'content-length': Buffer.byteLength(body) } : {},
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

let dir: string;
let stateDir: string;
let snapRoot: string;
let server: FuseManagerServer;
let client: FuseManagerClient;
const mounted: string[] = [];

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'dfnode-fm-'));
  stateDir = join(dir, 'state');
  snapRoot = join(dir, 'snapshotter');
  await mkdir(join(snapRoot, 'snapshots', '1', 'fs'), { recursive: true });
  mounted.length = 0;
  probed.length = 0;
  tocReads.length = 0;
  server = new FuseManagerServer({
    runtime: runtimeDouble(mounted),
    stateDir,
    mountRoots: [snapRoot, stateDir],
  });
  // As under a service manager that leaves the umask at 000: the socket must still be 0600.
  const old = process.umask(0);
  try {
    await server.listen();
  } finally {
    process.umask(old);
  }
  client = new FuseManagerClient(fuseManagerPaths(stateDir).socket, { timeoutMs: 10_000 });
});
afterEach(async () => {
  await server.close();
  await rm(dir, { recursive: true, force: true });
});

const mountReq = (mountpoint: string) => ({
  imageRef: 'reg.example/img:1',
  layer: { digest: DIGEST, size: 10 },
  mountpoint,
});

describe('fuse manager control socket', () => {
  it('is a socket of mode 0600 even under umask 000', async () => {
    const st = await stat(fuseManagerPaths(stateDir).socket);
    expect(st.isSocket()).toBe(true);
    expect((st.mode & 0o777).toString(8)).toBe('600');
    expect((await client.health()).ok).toBe(true);
  });

  it('mounts only under the node directories: outside, through a symlink or with .. is refused', async () => {
    const escape = join(snapRoot, 'snapshots', 'evil');
    await symlink('/etc', escape);
    await mkdir(join(dir, 'elsewhere'));
    const cases: Array<[string, string, RegExp]> = [
      ['/etc/cron.d', 'FORBIDDEN', /outside the node's directories/],
      [join(dir, 'elsewhere'), 'FORBIDDEN', /outside the node's directories/],
      [escape, 'FORBIDDEN', /really \/etc/],
      [`${snapRoot}/snapshots/../../elsewhere`, 'INVALID_ARGUMENT', /not a normalized absolute path/],
      [snapRoot, 'FORBIDDEN', /outside/],
      [join(snapRoot, 'missing'), 'INVALID_ARGUMENT', /ENOENT/],
    ];
    for (const [mp, code, message] of cases)
      await expect(client.mount(mountReq(mp)), mp).rejects.toMatchObject({
        code,
        message: expect.stringMatching(message),
      });
    const forbidden = await raw(client.socketPath, 'POST', '/mount', JSON.stringify(mountReq('/etc/cron.d')));
    expect(forbidden.status).toBe(403);
    expect(mounted).toEqual([]);
    expect(await client.list()).toEqual([]);
    // A snapshot directory is fine.
    const ok = join(snapRoot, 'snapshots', '1', 'fs');
    expect(await client.mount(mountReq(ok))).toMatchObject({ mountpoint: ok, digest: DIGEST });
    expect(mounted).toEqual([ok]);
  });

  it('POST /probe mounts an empty layer only under the node directories', async () => {
    const inside = join(snapRoot, 'probe');
    await mkdir(inside);
    await client.probe(inside);
    expect(probed).toEqual([inside]);
    await expect(client.probe('/etc/cron.d')).rejects.toMatchObject({ code: 'FORBIDDEN' });
    await expect(client.probe(snapRoot)).rejects.toMatchObject({ code: 'FORBIDDEN' });
    // not over a layer the manager serves
    const layer = join(snapRoot, 'snapshots', '1', 'fs');
    await client.mount(mountReq(layer));
    await expect(client.probe(layer)).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    expect(probed).toEqual([inside]);
  });

  it('answers malformed requests with an error status and keeps serving /health', async () => {
    const sock = client.socketPath;
    expect((await raw(sock, 'POST', '/mount', '{not json')).status).toBe(400);
    expect((await raw(sock, 'POST', '/mount', JSON.stringify({ mountpoint: 'relative' }))).status).toBe(400);
    expect((await raw(sock, 'DELETE', '/health')).status).toBe(404);
    expect((await raw(sock, 'GET', '/../../etc/passwd')).status).toBe(404);
    expect((await raw(sock, 'POST', '/release', '[]')).status).toBe(400);
    const huge = await raw(sock, 'POST', '/mount', Buffer.alloc(2 << 20, 0x20)).catch(
      (err: NodeJS.ErrnoException) => ({ status: -1, text: String(err.code) }),
    );
    // Either the answer arrives (400) or the server cuts the upload short: never a success, never a crash.
    expect([400, -1]).toContain(huge.status);
    // Garbage that is not HTTP at all, and clients that stop half way (headers, body) and stay connected.
    const garbage = connect(sock);
    const garbageAnswer = new Promise<string>((resolve) => {
      let got = '';
      garbage.on('data', (d) => (got += d.toString()));
      garbage.on('close', () => resolve(got));
      garbage.on('error', () => resolve(got));
    });
    garbage.write('\x00\x01\x02 NOT HTTP\r\n\r\n');
    expect(await garbageAnswer).toMatch(/^HTTP\/1\.1 400/);
    const halfHeaders = connect(sock);
    halfHeaders.write('POST /mount HTTP/1.1\r\nHost: x\r\n');
    const halfBody = connect(sock);
    halfBody.write('POST /mount HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"imageRef":');
    try {
      for (let i = 0; i < 3; i++) expect((await client.health()).ok).toBe(true);
    } finally {
      halfHeaders.destroy();
      halfBody.destroy();
    }
    expect((await client.health()).ok).toBe(true);
  });

  it("POST /warm reads each layer's TOC in the background; a failing read or a bad request does not hurt", async () => {
    const other = `sha256:${'b'.repeat(64)}`;
    await client.warm('reg.example/img:1', [
      { digest: DIGEST, size: 10, tocOffset: 4 },
      { digest: other, size: 20 },
    ]);
    await expect.poll(() => tocReads.length).toBe(2);
    expect(tocReads).toEqual([
      { image: 'reg.example/img:1', digest: DIGEST, tocOffset: 4 },
      { image: 'reg.example/img:1', digest: other, tocOffset: undefined },
    ]);
    const sock = client.socketPath;
    const many = Array.from({ length: 257 }, () => ({ digest: DIGEST, size: 1 }));
    expect(
      (await raw(sock, 'POST', '/warm', JSON.stringify({ imageRef: 'r/i:1', layers: many }))).status,
    ).toBe(400);
    const bad = { imageRef: 'r/i:1', layers: [{ digest: 'sha256:nothex', size: 1 }] };
    expect((await raw(sock, 'POST', '/warm', JSON.stringify(bad))).status).toBe(400);
    expect(
      (await raw(sock, 'POST', '/warm', JSON.stringify({ imageRef: 'Not A Ref!!', layers: [] }))).status,
    ).toBe(400);
    expect(tocReads).toHaveLength(2);
    expect((await client.health()).ok).toBe(true);
  });

  it('refuses to start on a socket another live manager serves, which keeps serving', async () => {
    const second = new FuseManagerServer({ runtime: runtimeDouble([]), stateDir, mountRoots: [snapRoot] });
    await expect(second.listen()).rejects.toMatchObject({
      code: 'FAILED_PRECONDITION',
      message: expect.stringContaining('served by another process'),
    });
    expect((await client.health()).ok).toBe(true);
  });
});
