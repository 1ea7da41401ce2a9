/**
 * The bundled dfnode's V8 code cache (src/cli/code-cache.ts, src/cli/bundle-entry.ts): the file format and its
 * checks, the write policy, and the real entry run on a copy of the built bundle: a cache is written when none
 * is usable, used afterwards, never trusted for another bundle, survives damage, and is left alone by runs
 * with Node flags other than the daemons' (which have a cache of their own).
 */
import { spawn } from 'node:child_process';
import { copyFile, readFile, stat, utimes, writeFile, readdir, chmod } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  decodeCache,
  encodeCache,
  cacheFlavour,
  readCache,
  sameKey,
  worthReplacing,
  writeCache,
  writePolicy,
  type CacheKey,
} from '../../src/cli/code-cache.js';
import { run } from '../helpers/cli.js';
import { REPO_ROOT } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/temp.js';
import { DAEMON_NODE_FLAGS } from '../../src/daemon/node-flags.js';

const KEY: CacheKey = { size: 4_000_000, mtimeMs: 1_700_000_000_123, node: 'v20.20.2', arch: 'x64' };

describe('code cache file', () => {
  it('round-trips its header and data', () => {
    const data = Buffer.from('v8 bytes \u0000\n\u00ff', 'latin1');
    for (const final of [false, true]) {
      const c = decodeCache(encodeCache(KEY, final, data));
      expect(c).toBeDefined();
      expect(c!.key).toEqual(KEY);
      expect(c!.final).toBe(final);
      expect(c!.data.equals(data)).toBe(true);
    }
  });

  it('reads anything damaged or foreign as no cache', () => {
    const good = encodeCache(KEY, false, Buffer.from('data'));
    const headerEnd = good.indexOf(0x0a, 20);
    const bad: Buffer[] = [
      Buffer.alloc(0),
      Buffer.from('data only'),
      good.subarray(0, 10), // magic cut
      good.subarray(0, headerEnd), // header without its newline
      good.subarray(0, headerEnd + 1), // no data
      Buffer.concat([Buffer.from('dfnode-code-cache 1\n{"size":1'), Buffer.from('\ndata')]), // bad JSON
      Buffer.from('dfnode-code-cache 1\nnull\ndata'),
      Buffer.from('dfnode-code-cache 1\n{"size":"1","mtimeMs":1,"node":"v","arch":"x","final":true}\ndata'),
      Buffer.from('dfnode-code-cache 1\n{"size":1,"mtimeMs":1,"node":"v","arch":"x"}\ndata'),
      Buffer.from('dfnode-code-cache 2\n{"size":1,"mtimeMs":1,"node":"v","arch":"x","final":true}\ndata'),
      Buffer.from('dfnode-code-cache 1\n' + ' '.repeat(2000) + '{}\ndata'), // a header past the bound
    ];
    for (const b of bad) expect(decodeCache(b), b.toString('latin1').slice(0, 60)).toBeUndefined();
  });

  it('matches a key field by field', () => {
    expect(sameKey(KEY, { ...KEY })).toBe(true);
    for (const k of [
      { ...KEY, size: KEY.size + 1 },
      { ...KEY, mtimeMs: KEY.mtimeMs + 1 },
      { ...KEY, node: 'v22.0.0' },
      { ...KEY, arch: 'arm64' },
    ]) {
      expect(sameKey(KEY, k)).toBe(false);
    }
  });

  it('writes atomically, reads back only for the same key, and reports a failed write', async () => {
    const { dir, cleanup } = await tempDir('dfcc-');
    try {
      const path = join(dir, 'x.cache');
      expect(writeCache(path, KEY, true, Buffer.from('abc'))).toBe(true);
      expect(readCache(path, KEY)?.data.toString()).toBe('abc');
      expect(readCache(path, { ...KEY, mtimeMs: 1 })).toBeUndefined();
      expect(readCache(join(dir, 'missing'), KEY)).toBeUndefined();
      expect(writeCache(join(dir, 'no', 'such', 'dir', 'x.cache'), KEY, false, Buffer.from('abc'))).toBe(
        false,
      );
      expect((await readdir(dir)).sort()).toEqual(['x.cache']);
    } finally {
      await cleanup();
    }
  });

  it('policy: write first when nothing was usable, once at the checkpoint over a non-final cache, else never', () => {
    const nonFinal = { key: KEY, final: false, data: Buffer.from('x') };
    const final = { ...nonFinal, final: true };
    expect(writePolicy(undefined, false, true)).toBe('first');
    expect(writePolicy(nonFinal, true, true)).toBe('first');
    expect(writePolicy(final, true, true)).toBe('first');
    expect(writePolicy(nonFinal, false, true)).toBe('checkpoint');
    expect(writePolicy(final, false, true)).toBe('never');
    expect(writePolicy(undefined, false, false)).toBe('never');
    expect(writePolicy(nonFinal, false, false)).toBe('never');
    expect(worthReplacing(1000, 1100)).toBe(false);
    expect(worthReplacing(1000, 1101)).toBe(true);
    const daemon = ['--initial-old-space-size=64'];
    expect(cacheFlavour([], undefined, daemon)).toBe('plain');
    expect(cacheFlavour([], ' ', daemon)).toBe('plain');
    expect(cacheFlavour(['--initial-old-space-size=64'], undefined, daemon)).toBe('daemon');
    expect(cacheFlavour(['--initial-old-space-size=64', '--inspect'], undefined, daemon)).toBeUndefined();
    expect(cacheFlavour(['--max-old-space-size=64'], undefined, daemon)).toBeUndefined();
    expect(cacheFlavour([], '--inspect', daemon)).toBeUndefined();
    expect(cacheFlavour(daemon, '--inspect', daemon)).toBeUndefined();
  });
});

describe('bundled dfnode with its code cache (a copy of dist/bundle)', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let entry: string;
  let cachePath: string;
  const env = { ...process.env, DFNODE_CODE_CACHE: 'debug', DFNODE_LOG_LEVEL: 'warn', NODE_OPTIONS: '' };

  beforeAll(async () => {
    ({ dir, cleanup } = await tempDir('dfcc-bundle-'));
    const built = join(REPO_ROOT, 'dist', 'bundle');
    for (const f of ['dfnode.js', 'dfnode-main.cjs']) await copyFile(join(built, f), join(dir, f));
    entry = join(dir, 'dfnode.js');
    cachePath = join(dir, 'dfnode-main.cjs.cache');
  });
  afterAll(async () => cleanup?.());

  const dfnode = (args: string[], nodeFlags: string[] = [], extraEnv: NodeJS.ProcessEnv = {}) =>
    run(process.execPath, [...nodeFlags, entry, ...args], { env: { ...env, ...extraEnv } });

  it('the build wrote a cache for the bundle it built', async () => {
    const built = join(REPO_ROOT, 'dist', 'bundle');
    const c = readCache(join(built, 'dfnode-main.cjs.cache'), {
      size: (await stat(join(built, 'dfnode-main.cjs'))).size,
      mtimeMs: Math.trunc((await stat(join(built, 'dfnode-main.cjs'))).mtimeMs),
      node: process.version,
      arch: process.arch,
    });
    expect(c, 'npm run build writes dist/bundle/dfnode-main.cjs.cache').toBeDefined();
    const d = readCache(join(built, 'dfnode-main.cjs.daemon.cache'), c!.key);
    expect(d, 'and dist/bundle/dfnode-main.cjs.daemon.cache, for the daemons').toBeDefined();
  });

  it('writes a cache at the end of a run that had none, and uses it in the next run', async () => {
    const r1 = await dfnode(['--version']);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r1.stderr).toContain('code cache: none; write: first');
    expect(r1.stderr).toContain('code cache: wrote');
    const first = await readFile(cachePath);
    expect(decodeCache(first)?.final).toBe(false);
    const r2 = await dfnode(['--version']);
    expect(r2.code, r2.stderr).toBe(0);
    expect(r2.stdout).toBe(r1.stdout);
    expect(r2.stderr).toContain('code cache: used; write: checkpoint');
    expect((await readFile(cachePath)).equals(first), 'a short run does not rewrite it').toBe(true);
  });

  it('a run with Node flags reads the cache but never writes it', async () => {
    const before = await readFile(cachePath);
    const r = await dfnode(['--version'], ['--max-old-space-size=96']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/code cache: (used|rejected); write: never/);
    expect((await readFile(cachePath)).equals(before)).toBe(true);
  });

  it('a daemon started with DAEMON_NODE_FLAGS (as bin/dfnode starts it) has a cache of its own', async () => {
    const daemonCache = join(dir, 'dfnode-main.cjs.daemon.cache');
    const plain = await readFile(cachePath);
    const r1 = await dfnode(['--version'], [...DAEMON_NODE_FLAGS]);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r1.stderr).toContain('code cache: none; write: first');
    expect(r1.stderr).toContain(`code cache: wrote ${daemonCache}`);
    const r2 = await dfnode(['--version'], [...DAEMON_NODE_FLAGS]);
    expect(r2.stderr).toContain('code cache: used; write: checkpoint');
    // the plain runs' cache is not touched, and still serves them
    expect((await readFile(cachePath)).equals(plain)).toBe(true);
    const r3 = await dfnode(['--version']);
    expect(r3.stderr).toContain('code cache: used; write: checkpoint');
  });

  it('damaged data is rejected by V8 and rewritten; a foreign file is ignored; the command runs either way', async () => {
    const c = decodeCache(await readFile(cachePath))!;
    const garbage = Buffer.alloc(c.data.length, 0x5a);
    await writeFile(cachePath, encodeCache(c.key, true, garbage));
    const r1 = await dfnode(['--version']);
    expect(r1.code, r1.stderr).toBe(0);
    expect(r1.stderr).toContain('code cache: rejected; write: first');
    expect(decodeCache(await readFile(cachePath))?.data.equals(garbage)).toBe(false);
    await writeFile(cachePath, 'not a cache');
    const r2 = await dfnode(['--version']);
    expect(r2.code, r2.stderr).toBe(0);
    expect(r2.stderr).toContain('code cache: none; write: first');
  });

  it('a cache made for another build of the bundle (other mtime) is not used', async () => {
    await dfnode(['--version']);
    const later = new Date(Date.now() + 5_000);
    await utimes(join(dir, 'dfnode-main.cjs'), later, later);
    const r = await dfnode(['--version']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toContain('code cache: none; write: first');
  });

  it('DFNODE_CODE_CACHE=0: no cache read or written', async () => {
    await writeFile(cachePath, 'not a cache');
    const r = await dfnode(['--version'], [], { DFNODE_CODE_CACHE: '0' });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).not.toContain('code cache');
    expect((await readFile(cachePath)).toString()).toBe('not a cache');
  });

  it('a read-only directory: the run goes on without writing', async () => {
    await writeFile(cachePath, 'not a cache');
    await chmod(dir, 0o555);
    try {
      // root writes anyway: run as nobody where possible
      const asNobody = process.getuid?.() === 0;
      const r = asNobody
        ? await run(
            'setpriv',
            ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, entry, '--version'],
            {
              env,
            },
          )
        : await dfnode(['--version']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toContain('could not write');
    } finally {
      await chmod(dir, 0o755);
    }
  });

  it('a long run replaces a non-final cache at its checkpoint with a larger one, marked final', async () => {
    await dfnode(['--version']); // a short run's cache: the version path only
    const short = decodeCache(await readFile(cachePath))!;
    expect(short.final).toBe(false);
    // `dfnode get` from an origin that answers only after the checkpoint: the run compiles its whole path first
    let release: () => void = () => {};
    const held = new Promise<void>((r) => (release = r));
    const server = createServer((_req, res) => {
      void held.then(() => res.writeHead(404).end());
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    try {
      const child = spawn(
        process.execPath,
        [
          entry,
          'get',
          `http://127.0.0.1:${port}/file`,
          '-O',
          join(dir, 'out'),
          '--quiet',
          '--state-dir',
          join(dir, 's'),
          '--cache-dir',
          join(dir, 'c'),
        ],
        { env: { ...env, DFNODE_CODE_CACHE_CHECKPOINT_MS: '1500' }, stdio: ['ignore', 'ignore', 'pipe'] },
      );
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const done = new Promise<number | null>((r) => child.on('close', r));
      const deadline = Date.now() + 60_000;
      while (!stderr.includes('(final') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      release();
      await done;
      expect(stderr).toContain('code cache: used; write: checkpoint');
      expect(stderr).toMatch(/wrote .* \(final, this run\)/);
    } finally {
      release();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
    const long = decodeCache(await readFile(cachePath))!;
    expect(long.final).toBe(true);
    expect(long.data.length).toBeGreaterThan(short.data.length);
    const r = await dfnode(['--version']);
    expect(r.stderr).toContain('code cache: used (final); write: never');
  });
});
