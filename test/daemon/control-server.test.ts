/**
 * `dfnode run`'s control socket over a real unix socket: the client the CLI uses against the server, and raw
 * hostile requests (oversized, malformed, unknown command, bad arguments, half-sent, a user other than root).
 */
import { spawnSync } from 'node:child_process';
import { chmod, stat } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { callControl, NoDaemon } from '../../src/cli/control-client.js';
import { MAX_REQUEST_BYTES } from '../../src/daemon/control-protocol.js';
import { ControlServer } from '../../src/daemon/control-server.js';
import { DfError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { tempDir } from '../helpers/temp.js';

/** Sends raw bytes, half-closes, and returns every reply line the server sent before closing. */
function rawRequest(path: string, bytes: Buffer | string, end = true): Promise<unknown[]> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let out = '';
    sock.on('data', (d) => (out += d.toString()));
    sock.on('error', reject);
    sock.on('close', () =>
      resolve(
        out
          .split('\n')
          .filter(Boolean)
          .map((l) => JSON.parse(l) as unknown),
      ),
    );
    sock.write(bytes, () => {
      if (end) sock.end();
    });
  });
}

describe('control socket', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let server: ControlServer;
  let path: string;
  let aborted: string[];
  let releases: Array<() => void>;

  beforeEach(async () => {
    ({ dir, cleanup } = await tempDir('dfctl-'));
    path = join(dir, 'run', 'control.sock');
    aborted = [];
    releases = [];
    server = new ControlServer(path, { logger: silentLogger, requestTimeoutMs: 300, maxConnections: 2 });
    server.register('echo', {
      args: z.strictObject({ text: z.string().max(100), fail: z.boolean().optional() }),
      run: async (args, ctx) => {
        ctx.progress(`got ${args.text}`);
        if (args.fail) throw DfError.notFound(`no ${args.text}`);
        return { echoed: args.text };
      },
    });
    server.register('hang', {
      args: z.strictObject({}),
      run: (_args, ctx) =>
        new Promise((resolve, reject) => {
          releases.push(() => resolve('released'));
          ctx.signal.addEventListener('abort', () => {
            aborted.push('hang');
            reject(DfError.aborted());
          });
        }),
    });
    await server.listen();
  });

  afterEach(async () => {
    for (const r of releases) r();
    await server.stop();
    await cleanup();
  });

  it('runs a command: progress lines, then the result; the socket is mode 0600', async () => {
    const lines: string[] = [];
    const r = await callControl(path, 'echo', { text: 'hi' }, { onProgress: (l) => lines.push(l) });
    expect(r).toEqual({ echoed: 'hi' });
    expect(lines).toEqual(['got hi']);
    expect((await stat(path)).mode & 0o777).toBe(0o600);
  });

  it("a command's error reaches the client with its code", async () => {
    const err = await callControl(path, 'echo', { text: 'x', fail: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DfError);
    expect((err as DfError).code).toBe('NOT_FOUND');
    expect((err as DfError).message).toBe('no x');
  });

  it('refuses an unknown command, bad arguments, a wrong protocol version and malformed JSON', async () => {
    const unknown = await callControl(path, 'rm-rf', {}).catch((e: unknown) => e);
    expect((unknown as DfError).code).toBe('UNSUPPORTED');
    expect((unknown as DfError).message).toMatch(/unknown command "rm-rf" \(known: echo, hang\)/);
    const bad = await callControl(path, 'echo', { text: 'a', extra: 1 }).catch((e: unknown) => e);
    expect((bad as DfError).code).toBe('INVALID_ARGUMENT');
    expect((bad as DfError).message).toMatch(/echo: bad arguments/);
    const tooLong = await callControl(path, 'echo', { text: 'a'.repeat(101) }).catch((e: unknown) => e);
    expect((tooLong as DfError).code).toBe('INVALID_ARGUMENT');
    expect(await rawRequest(path, '{"v":2,"command":"echo","args":{"text":"a"}}\n')).toEqual([
      {
        ok: false,
        error: { code: 'INVALID_ARGUMENT', message: expect.stringMatching(/malformed request/), exit: 2 },
      },
    ]);
    expect(await rawRequest(path, 'hello\n')).toEqual([
      {
        ok: false,
        error: { code: 'INVALID_ARGUMENT', message: 'control socket: malformed request (not JSON)', exit: 2 },
      },
    ]);
    expect(await rawRequest(path, '[1,2]\n')).toMatchObject([{ ok: false }]);
    // two requests on one connection
    expect(await rawRequest(path, '{"v":1,"command":"echo","args":{"text":"a"}}\n{}\n')).toEqual([
      {
        ok: false,
        error: { code: 'INVALID_ARGUMENT', message: 'control socket: one request per connection', exit: 2 },
      },
    ]);
    // the server still answers afterwards
    expect(await callControl(path, 'echo', { text: 'ok' })).toEqual({ echoed: 'ok' });
  });

  it('refuses an oversized request without buffering it whole, and one that never ends', async () => {
    const big = Buffer.alloc(MAX_REQUEST_BYTES + 1, 0x61);
    expect(await rawRequest(path, big, false)).toEqual([
      {
        ok: false,
        error: {
          code: 'INVALID_ARGUMENT',
          message: `control request is longer than ${MAX_REQUEST_BYTES} bytes`,
          exit: 2,
        },
      },
    ]);
    expect(await rawRequest(path, '{"v":1,', true)).toEqual([
      {
        ok: false,
        error: {
          code: 'INVALID_ARGUMENT',
          message: 'control socket: the request ended without a newline',
          exit: 2,
        },
      },
    ]);
    // sent half, never finished, connection left open: answered after the request deadline (300 ms here)
    expect(await rawRequest(path, '{"v":1,', false)).toEqual([
      {
        ok: false,
        error: { code: 'TIMEOUT', message: expect.stringMatching(/no complete request within/), exit: 8 },
      },
    ]);
  });

  it('a client that goes away cancels its command; past the connection limit requests are refused', async () => {
    const ac = new AbortController();
    const first = callControl(path, 'hang', {}, { signal: ac.signal }).catch((e: unknown) => e);
    const second = callControl(path, 'hang', {}).catch((e: unknown) => e);
    await expect.poll(() => releases.length).toBe(2);
    const third = await callControl(path, 'echo', { text: 'x' }).catch((e: unknown) => e);
    expect((third as DfError).code).toBe('NO_SPACE');
    ac.abort();
    expect(((await first) as DfError).code).toBe('ABORTED');
    await expect.poll(() => aborted).toEqual(['hang']);
    for (const r of releases) r();
    expect(await second).toBe('released');
  });

  it('no daemon: the client says so (missing socket, nobody listening)', async () => {
    const missing = await callControl(join(dir, 'none.sock'), 'echo', { text: 'a' }).catch((e: unknown) => e);
    expect(missing).toBeInstanceOf(NoDaemon);
    expect((missing as NoDaemon).message).toMatch(/no dfnode run answers on .*none\.sock \(ENOENT\)/);
    await server.stop();
    const stopped = await callControl(path, 'echo', { text: 'a' }).catch((e: unknown) => e);
    expect(stopped).toBeInstanceOf(NoDaemon);
  });

  it('refuses to take over a socket another server answers on', async () => {
    const other = new ControlServer(path, { logger: silentLogger });
    await expect(other.listen()).rejects.toThrow(/served by another process/);
    expect(await callControl(path, 'echo', { text: 'still' })).toEqual({ echoed: 'still' });
  });

  it.skipIf(process.getuid?.() !== 0 || spawnSync('setpriv', ['--version']).status !== 0)(
    'another user cannot connect (mode 0600 socket owned by root)',
    async () => {
      // let others reach the directory, so that only the socket's own mode stops them
      await chmod(dir, 0o755);
      await chmod(join(dir, 'run'), 0o755);
      const script = `require('net').connect(${JSON.stringify(path)}).on('error', (e) => { console.log(e.code); process.exit(0); }).on('connect', () => { console.log('connected'); process.exit(0); })`;
      const r = spawnSync(
        'setpriv',
        ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, '-e', script],
        { encoding: 'utf8' },
      );
      expect(r.stdout.trim()).toBe('EACCES');
    },
  );
});
