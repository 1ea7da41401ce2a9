/**
 * V8 code cache for the bundled dfnode CLI (dist/bundle/dfnode-main.cjs): compiling the 3.5 MB bundle and the
 * functions a command runs costs a start 0.2 s of CPU, more than the command's own work for `dfnode preheat` up to
 * its first block, and hosts starting together share their cores. Node 20 has no compile cache of its own
 * (`module.enableCompileCache` came in 22), so the loader (bundle-entry.ts) compiles the bundle as one
 * `vm.Script` with the cached data of an earlier run.
 *
 * The cache file sits beside the bundle and is trusted as the bundle is (V8 checks its version, flags and the
 * source's length, not the source itself): it is used only while its header names the bundle's size and mtime
 * and this Node's version and architecture, so a rebuilt or replaced bundle never meets an old cache. It is
 * written atomically (temporary file, rename): by `npm run build` from a warm-up that loads every command
 * module; by a run that found none it could use (stale, rejected by V8, missing), at its end or 10 s in,
 * whichever comes first; and once by a long run (a daemon, a preheat) 10 s in, when the cache it used was
 * written at the end of a short run or by the build: its cache also holds the functions the command ran, and
 * replaces the old one when larger by a tenth. Such a checkpoint marks the cache final: later runs only read
 * it. Only runs without Node flags (`node FILE`, no NODE_OPTIONS) write it: V8 rejects a cache made under other
 * flags (`--max-old-space-size` is one), and a run with such flags must not replace the one every other run
 * uses; it still reads it (V8 takes it where the flags allow). The daemons bin/dfnode starts with
 * DAEMON_NODE_FLAGS (src/daemon/node-flags.ts) have a cache of their own beside it, `….daemon.cache`, under
 * the same rules (cacheFlavour). Any failure to read or write is ignored: the bundle then compiles as it would
 * without a cache. `DFNODE_CODE_CACHE=0` turns it off.
 */
import { readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';

const MAGIC = 'dfnode-code-cache 1\n';
/** Headers longer than this are not ours. */
const MAX_HEADER = 1024;

/** What a cache file must match to be used. */
export interface CacheKey {
  /** Size and mtime (ms) of the bundle the cache was made from. */
  size: number;
  mtimeMs: number;
  node: string;
  arch: string;
}

export interface CacheFile {
  key: CacheKey;
  /** Written 10 s into a long run: no later run replaces it. */
  final: boolean;
  data: Buffer;
}

export function bundleKey(bundlePath: string): CacheKey {
  const st = statSync(bundlePath);
  return { size: st.size, mtimeMs: Math.trunc(st.mtimeMs), node: process.version, arch: process.arch };
}

export function encodeCache(key: CacheKey, final: boolean, data: Buffer): Buffer {
  const header = Buffer.from(MAGIC + JSON.stringify({ ...key, final }) + '\n');
  return Buffer.concat([header, data]);
}

/** The cache in `file` if it is one of ours, else undefined (any damage reads as no cache). */
export function decodeCache(file: Buffer): CacheFile | undefined {
  if (file.length <= MAGIC.length || file.subarray(0, MAGIC.length).toString('latin1') !== MAGIC)
    return undefined;
  const end = file.indexOf(0x0a, MAGIC.length);
  if (end < 0 || end - MAGIC.length > MAX_HEADER) return undefined;
  let h: unknown;
  try {
    h = JSON.parse(file.subarray(MAGIC.length, end).toString('utf8'));
  } catch {
    return undefined;
  }
  if (h === null || typeof h !== 'object') return undefined;
  const r = h as Record<string, unknown>;
  if (typeof r.size !== 'number' || typeof r.mtimeMs !== 'number') return undefined;
  if (typeof r.node !== 'string' || typeof r.arch !== 'string') return undefined;
  if (typeof r.final !== 'boolean') return undefined;
  const data = file.subarray(end + 1);
  if (data.length === 0) return undefined;
  return { key: { size: r.size, mtimeMs: r.mtimeMs, node: r.node, arch: r.arch }, final: r.final, data };
}

export function sameKey(a: CacheKey, b: CacheKey): boolean {
  return a.size === b.size && a.mtimeMs === b.mtimeMs && a.node === b.node && a.arch === b.arch;
}

/** The cache at `path` for the bundle with `key`, or undefined (none, damaged, or made for another bundle). */
export function readCache(path: string, key: CacheKey): CacheFile | undefined {
  let file: Buffer;
  try {
    file = readFileSync(path);
  } catch {
    return undefined;
  }
  const c = decodeCache(file);
  return c && sameKey(c.key, key) ? c : undefined;
}

/**
 * Which cache a process reads and may write: 'plain' (no Node flags), 'daemon' (exactly `daemonFlags`, as
 * bin/dfnode starts a daemon; a cache of its own, since V8 ties a cache to the flags), or undefined (other
 * flags: it reads the plain cache, where V8 may take it, and writes none).
 */
export function cacheFlavour(
  execArgv: readonly string[],
  nodeOptions: string | undefined,
  daemonFlags: readonly string[],
): 'plain' | 'daemon' | undefined {
  if (nodeOptions?.trim()) return undefined;
  if (execArgv.length === 0) return 'plain';
  const same = execArgv.length === daemonFlags.length && execArgv.every((f, i) => f === daemonFlags[i]);
  return same ? 'daemon' : undefined;
}

/** Writes atomically; false when it could not (read-only install, full disk: the run goes on). */
export function writeCache(path: string, key: CacheKey, final: boolean, data: Buffer): boolean {
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    writeFileSync(tmp, encodeCache(key, final, data), { mode: 0o644 });
    renameSync(tmp, path);
    return true;
  } catch {
    try {
      unlinkSync(tmp);
    } catch {
      // nothing was written
    }
    return false;
  }
}

/**
 * When this run writes the cache: `first` (at its end or at the checkpoint, whichever comes first) when it had
 * none it could use; `checkpoint` (10 s in, only if still running) when the one it used is not final; `never`
 * when that one is final, or this run may not write (the cache is off, or Node runs with flags).
 */
export type WritePolicy = 'first' | 'checkpoint' | 'never';

export function writePolicy(used: CacheFile | undefined, rejected: boolean, mayWrite: boolean): WritePolicy {
  if (!mayWrite) return 'never';
  if (!used || rejected) return 'first';
  return used.final ? 'never' : 'checkpoint';
}

/** Whether a checkpoint's cache of `next` bytes should replace the one of `current` bytes the run used. */
export function worthReplacing(current: number, next: number): boolean {
  return next > current * 1.1;
}
