/**
 * Helpers for the dfnode node tests (test/integration/node-*.test.ts): converted images in a real registry,
 * `dfnode mount` as a child process, trees unpacked by umoci, and walks of mounted trees.
 *
 * Everything that touches a FUSE mount is asynchronous or runs in a child process: a mount served by a
 * process that is blocked in a synchronous call on it would deadlock. Here the mounts are served by child
 * processes, but the habit keeps the helpers usable either way.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { lstat, mkdir, mkdtemp, readdir, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { expect } from 'vitest';
import type { BlobCacheInfo } from '../../src/cache/cache-manager.js';
import type { MountRecord } from '../../src/daemon/mount-records.js';
import { readMountInfo } from '../../src/fuse/mounts.js';
import { cliPath, run, runCli, runOk, type CliResult } from './cli.js';
import { sha256File } from './digest.js';
import { ensureFixture, type FixtureName } from './fixtures.js';
import { pushToRegistry, requireRegistry, startRegistry, type TestRegistry } from './registry.js';
import { hasTool, requireConditions, type Requirement } from './require.js';

/** Root, /dev/fuse, overlayfs and the tools these tests run. */
export function requireNodeMounts(extraTools: string[] = []): Requirement {
  const tools = ['skopeo', 'umoci', 'getfattr', 'mount', 'umount', ...extraTools];
  const conds: Record<string, boolean> = {
    'root (FUSE and overlay mounts)': process.getuid?.() === 0,
    '/dev/fuse': existsSync('/dev/fuse'),
    'overlay filesystem':
      existsSync('/proc/filesystems') && readFileSync('/proc/filesystems', 'utf8').includes('overlay'),
  };
  for (const t of tools) conds[`${t} in PATH`] = hasTool(t);
  const reg = requireRegistry(['none']);
  if (reg.skip) conds[reg.reason] = false;
  return requireConditions(conds);
}

// ------------------------------------------------------------------ images

export interface ImageSet {
  reg: TestRegistry;
  /** `HOST/name:1-dfb` per fixture. */
  dfb: Record<string, string>;
  /** OCI layout dir and tag of each source fixture (for umoci). */
  source: Record<string, { dir: string; tag: string }>;
}

/** Starts a registry, pushes the fixtures with skopeo and converts them with dfconvert (registry → registry). */
export async function pushAndConvert(names: FixtureName[], workDir: string): Promise<ImageSet> {
  const source: ImageSet['source'] = {};
  for (const n of names) {
    const fx = await ensureFixture(n);
    source[n] = { dir: fx.dir, tag: fx.tag };
  }
  const reg = await startRegistry();
  try {
    const dfb: Record<string, string> = {};
    for (const n of names) {
      const fx = source[n]!;
      await pushToRegistry(`oci:${fx.dir}:${fx.tag}`, `${reg.host}/${n}:1`);
      const r = await runCli('dfconvert', [
        '--plain-http',
        '--quiet',
        '--work-dir',
        join(workDir, 'dfwork'),
        `${reg.host}/${n}:1`,
      ]);
      if (r.code !== 0) throw new Error(`dfconvert ${n} failed (${r.code}): ${r.stderr}`);
      dfb[n] = `${reg.host}/${n}:1-dfb`;
    }
    return { reg, dfb, source };
  } catch (err) {
    await reg.stop();
    throw err;
  }
}

export interface DfbManifestLayer {
  digest: string;
  size: number;
}

/** The DFB layers of a converted image (bottom first), read from the registry with plain HTTP. */
export async function dfbLayers(registryUrl: string, ref: string): Promise<DfbManifestLayer[]> {
  const m = /^[^/]+\/(.+):([^:]+)$/.exec(ref);
  if (!m) throw new Error(`bad ref ${ref}`);
  const res = await fetch(`${registryUrl}/v2/${m[1]}/manifests/${m[2]}`, {
    headers: { accept: 'application/vnd.oci.image.manifest.v1+json' },
  });
  if (!res.ok) throw new Error(`manifest ${ref}: HTTP ${res.status}`);
  const man = (await res.json()) as { layers: DfbManifestLayer[] };
  return man.layers.map((l) => ({ digest: l.digest, size: l.size }));
}

/** `umoci unpack` of an OCI layout tag into `bundle`; returns the rootfs path. */
export async function umociUnpack(layoutDir: string, tag: string, bundle: string): Promise<string> {
  await runOk('umoci', ['unpack', '--image', `${layoutDir}:${tag}`, bundle]);
  return join(bundle, 'rootfs');
}

// ------------------------------------------------------------------ dfnode mount as a child process

export interface NodeDirs {
  cacheDir: string;
  stateDir: string;
}

export interface MountProcess {
  pid: number;
  child: ChildProcess;
  target: string;
  stdout(): string;
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, wait for exit (SIGKILL after `graceMs`). */
  stop(graceMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL and wait for exit. */
  kill(): Promise<void>;
}

const liveMounts = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of liveMounts)
    if (c.pid && c.exitCode === null && c.signalCode === null) process.kill(c.pid, 'SIGKILL');
});

function nodeArgs(dirs: NodeDirs): string[] {
  return ['--cache-dir', dirs.cacheDir, '--state-dir', dirs.stateDir];
}

/**
 * Spawns `dfnode mount --plain-http ... REF DIR` and resolves once it printed its "mounted" line.
 * Rejects (and kills the child) when it exits first or does not mount within `timeoutMs`.
 */
export async function startMount(
  ref: string,
  target: string,
  dirs: NodeDirs,
  opts: { args?: string[]; env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<MountProcess> {
  // a mount left by a killed dfnode answers ENOTCONN: dfnode mount itself cleans it up and creates the dir
  await mkdir(target, { recursive: true }).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOTCONN') throw e;
  });
  const args = [
    cliPath('dfnode'),
    'mount',
    '--plain-http',
    ...nodeArgs(dirs),
    '--metrics-address',
    '',
    ...(opts.args ?? []),
    ref,
    target,
  ];
  const child = spawn(process.execPath, args, {
    env: { ...process.env, DFNODE_LOG_LEVEL: 'warn', ...opts.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveMounts.add(child);
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (err = (err + d).slice(-20_000)));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
    child.once('exit', (code, signal) => {
      liveMounts.delete(child);
      res({ code, signal });
    }),
  );
  const proc: MountProcess = {
    pid: child.pid!,
    child,
    target: resolve(target),
    stdout: () => out,
    stderr: () => err,
    exited,
    async stop(graceMs = 30_000) {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
        const r = await exited;
        clearTimeout(t);
        return r;
      }
      return exited;
    },
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  const ok = await new Promise<boolean>((res) => {
    const timer = setTimeout(() => res(false), opts.timeoutMs ?? 120_000);
    const onData = () => {
      if (/^mounted /m.test(out)) {
        clearTimeout(timer);
        child.stdout!.off('data', onData);
        res(true);
      }
    };
    child.stdout!.on('data', onData);
    void exited.then(() => {
      clearTimeout(timer);
      res(/^mounted /m.test(out));
    });
  });
  if (!ok) {
    await proc.kill();
    throw new Error(
      `dfnode mount ${ref} ${target} did not mount (exit ${child.exitCode ?? child.signalCode}):\n${err}`,
    );
  }
  return proc;
}

/** Runs `dfnode SUBCOMMAND --cache-dir .. --state-dir .. ARGS`. */
export function dfnode(
  sub: string,
  dirs: NodeDirs,
  args: string[] = [],
  timeoutMs = 120_000,
): Promise<CliResult> {
  return runCli('dfnode', [sub, ...nodeArgs(dirs), ...args], { timeoutMs });
}

/** What `dfnode status --json` prints. */
export interface StatusJson {
  mounts: Array<MountRecord & { alive: boolean }>;
  blobs: BlobCacheInfo[];
}

export async function status(dirs: NodeDirs): Promise<StatusJson> {
  const r = await dfnode('status', dirs, ['--json']);
  if (r.code !== 0) throw new Error(`dfnode status failed (${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as StatusJson;
}

/** Polls `check` every `everyMs` until it returns a truthy value; throws after `timeoutMs` (a safety net). */
export async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined | false>,
  timeoutMs = 300_000,
  everyMs = 250,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

// ------------------------------------------------------------------ mounts and temp dirs

export interface MountEntry {
  mountpoint: string;
  fstype: string;
  source: string;
}

export async function mountsUnder(dir: string): Promise<MountEntry[]> {
  const root = resolve(dir);
  return readMountInfo()
    .filter((m) => m.mountpoint === root || m.mountpoint.startsWith(root + '/'))
    .map(({ mountpoint, fstype, source }) => ({ mountpoint, fstype, source }));
}

/** `umount -l` everything mounted at or below `dir`, deepest first. */
export async function unmountAllUnder(dir: string): Promise<void> {
  for (let pass = 0; pass < 5; pass++) {
    const ms = (await mountsUnder(dir)).map((m) => m.mountpoint).sort((a, b) => b.length - a.length);
    if (!ms.length) return;
    for (const m of ms) await run('umount', ['-l', m], { timeoutMs: 15_000 }).catch(() => undefined);
  }
}

/** A temp dir; cleanup kills nothing but unmounts everything below it and removes it. */
export async function nodeTempDir(prefix: string): Promise<{ dir: string; cleanup: () => Promise<void> }> {
  const base = join(tmpdir(), 'dfnode-node-it');
  await mkdir(base, { recursive: true });
  const dir = await mkdtemp(join(base, prefix));
  return {
    dir,
    cleanup: async () => {
      await unmountAllUnder(dir);
      await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    },
  };
}

// ------------------------------------------------------------------ trees

export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket';
  /** st_mode permission and special bits (07777). */
  perm: number;
  uid: number;
  gid: number;
  /** mtime truncated to milliseconds: fuse-native reports times with millisecond precision. */
  mtimeMs: bigint;
  size?: number;
  sha256?: string;
  target?: string;
  rdev?: number;
  /** `dev:ino`, to compare hard-link structure. */
  inode: string;
  xattrs: Record<string, string>;
}

function typeOf(s: import('node:fs').BigIntStats): TreeEntry['type'] {
  if (s.isFile()) return 'file';
  if (s.isDirectory()) return 'dir';
  if (s.isSymbolicLink()) return 'symlink';
  if (s.isCharacterDevice()) return 'char';
  if (s.isBlockDevice()) return 'block';
  if (s.isFIFO()) return 'fifo';
  return 'socket';
}

/** Asserts that each layer's cache file under `cacheDir` hashes to the layer's digest. */
export async function expectCacheMatches(cacheDir: string, layers: { digest: string }[]): Promise<void> {
  for (const l of layers) {
    const f = join(cacheDir, 'blobs', 'sha256', l.digest.slice(7), 'data');
    expect('sha256:' + (await sha256File(f)), `${f}`).toBe(l.digest);
  }
}

/** Which xattrs the fidelity comparison covers: user.* and trusted.* except overlayfs' own trusted.overlay.*. */
function comparedXattr(name: string): boolean {
  return name.startsWith('user.') || (name.startsWith('trusted.') && !name.startsWith('trusted.overlay.'));
}

/** getfattr escapes non-printable bytes as \ooo (and backslash as \\); undo it, decode UTF-8. */
function unescapeGetfattr(s: string): string {
  const bytes: number[] = [];
  for (let i = 0; i < s.length; i++) {
    if (s[i] === '\\' && /^[0-7]{3}$/.test(s.slice(i + 1, i + 4))) {
      bytes.push(parseInt(s.slice(i + 1, i + 4), 8));
      i += 3;
    } else if (s[i] === '\\' && s[i + 1] === '\\') {
      bytes.push(0x5c);
      i++;
    } else bytes.push(...Buffer.from(s[i]!, 'utf8'));
  }
  return Buffer.from(bytes).toString('utf8');
}

/** All xattrs below `root` (one `getfattr -R` child process), keyed by path relative to root. */
async function xattrsUnder(
  root: string,
  filter = comparedXattr,
): Promise<Map<string, Record<string, string>>> {
  const r = await run(
    'getfattr',
    ['-R', '-P', '-h', '-d', '-m', '-', '--absolute-names', '-e', 'hex', root],
    {
      timeoutMs: 300_000,
    },
  );
  if (r.code !== 0 && !r.stdout) throw new Error(`getfattr -R ${root} failed: ${r.stderr}`);
  const out = new Map<string, Record<string, string>>();
  let cur: Record<string, string> | undefined;
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      const p = unescapeGetfattr(line.slice(8));
      const rel = p === root ? '' : p.slice(root.length + 1);
      cur = {};
      out.set(rel, cur);
    } else if (cur && line) {
      const eq = line.indexOf('=');
      const name = eq < 0 ? line : line.slice(0, eq);
      if (filter(name)) cur[name] = eq < 0 ? '' : line.slice(eq + 1);
    }
  }
  return out;
}

/**
 * Walks `root` with async fs calls only (lstat, readdir, readlink, streamed reads) and returns every entry by
 * path relative to root ('' is the root). Regular files are hashed unless `hash` is false.
 */
export async function snapshotTree(
  root: string,
  opts: { hash?: boolean } = {},
): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  const xattrs = await xattrsUnder(root);
  const visit = async (rel: string): Promise<void> => {
    const p = rel ? join(root, rel) : root;
    const s = await lstat(p, { bigint: true });
    const type = typeOf(s);
    const e: TreeEntry = {
      type,
      perm: Number(s.mode & 0o7777n),
      uid: Number(s.uid),
      gid: Number(s.gid),
      mtimeMs: s.mtimeNs / 1_000_000n,
      inode: `${s.dev}:${s.ino}`,
      xattrs: xattrs.get(rel) ?? {},
    };
    if (type === 'file') {
      e.size = Number(s.size);
      if (opts.hash !== false) e.sha256 = await sha256File(p);
    } else if (type === 'symlink') e.target = await readlink(p);
    else if (type === 'char' || type === 'block') e.rdev = Number(s.rdev);
    out.set(rel, e);
    if (type === 'dir') {
      const names = (await readdir(p)).sort();
      // a few at a time: keeps the FUSE server busy without thousands of open files
      for (let i = 0; i < names.length; i += 16)
        await Promise.all(names.slice(i, i + 16).map((n) => visit(rel ? `${rel}/${n}` : n)));
    }
  };
  await visit('');
  return out;
}

/** Path → smallest path sharing its inode, for non-directories that share an inode with another path. */
export function hardLinkGroups(tree: Map<string, TreeEntry>): Map<string, string> {
  const byInode = new Map<string, string[]>();
  for (const [p, e] of tree) {
    if (e.type === 'dir') continue;
    const l = byInode.get(e.inode) ?? [];
    l.push(p);
    byInode.set(e.inode, l);
  }
  const out = new Map<string, string>();
  for (const paths of byInode.values()) {
    if (paths.length < 2) continue;
    const first = [...paths].sort()[0]!;
    for (const p of paths) out.set(p, first);
  }
  return out;
}

/** The comparable part of an entry (no inode numbers). */
export function comparable(e: TreeEntry): Omit<TreeEntry, 'inode'> {
  const { inode: _i, ...rest } = e;
  void _i;
  return rest;
}

/** Whether a process is alive (signal 0). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
