import { execFile, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { silentLogger, type Logger } from '../log.js';

const execFileP = promisify(execFile);

export interface MountInfo {
  mountId: number;
  major: number;
  minor: number;
  mountpoint: string;
  fstype: string;
  source: string;
}

/** Undoes the octal escapes (\040 for space, ...) of /proc/self/mountinfo. */
function unescape(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Parses /proc/self/mountinfo (or the given text). */
export function readMountInfo(text?: string): MountInfo[] {
  const src = text ?? readFileSync('/proc/self/mountinfo', 'utf8');
  const out: MountInfo[] = [];
  for (const line of src.split('\n')) {
    if (!line) continue;
    const f = line.split(' ');
    const dash = f.indexOf('-');
    if (dash < 6 || f.length < dash + 3) continue;
    const [major, minor] = f[2]!.split(':').map(Number);
    out.push({
      mountId: Number(f[0]),
      major: major!,
      minor: minor!,
      mountpoint: unescape(f[4]!),
      fstype: f[dash + 1]!,
      source: unescape(f[dash + 2]!),
    });
  }
  return out;
}

export function isFuseType(fstype: string): boolean {
  return fstype === 'fuse' || fstype.startsWith('fuse.') || fstype === 'fuseblk';
}

const FUSECTL = '/sys/fs/fuse/connections';

/**
 * Aborts the FUSE connection behind a mount (fusectl): every pending and future request fails with ENOTCONN
 * at once, so unmounting cannot wait on the (possibly blocked or dead) serving process. Best effort.
 */
export function abortConnection(mountpoint: string): boolean {
  const mp = resolve(mountpoint);
  const m = readMountInfo().find((x) => x.mountpoint === mp && isFuseType(x.fstype));
  if (!m) return false;
  try {
    if (!existsSync(`${FUSECTL}/${m.minor}`)) {
      spawnSync('mount', ['-t', 'fusectl', 'none', FUSECTL], { stdio: 'ignore', timeout: 5000 });
    }
    writeFileSync(`${FUSECTL}/${m.minor}/abort`, '1');
    return true;
  } catch {
    return false;
  }
}

function isMounted(mp: string): boolean {
  return readMountInfo().some((x) => x.mountpoint === mp);
}

/**
 * Detaches a mount (MNT_DETACH: succeeds while busy; the kernel frees it when the last user goes away).
 * As root `umount -l --no-canonicalize` (it does not stat the mountpoint, which could wait on this very
 * process); otherwise `fusermount3 -uz` / `fusermount -uz`. Resolves when the mount is gone.
 */
export async function lazyUnmount(mountpoint: string): Promise<void> {
  const mp = resolve(mountpoint);
  if (!isMounted(mp)) return;
  const cmds: Array<[string, string[]]> =
    process.getuid?.() === 0
      ? [['umount', ['-l', '-c', mp]]]
      : [
          ['fusermount3', ['-uz', mp]],
          ['fusermount', ['-uz', mp]],
        ];
  const errors: string[] = [];
  for (const [cmd, args] of cmds) {
    try {
      await execFileP(cmd, args, { timeout: 10_000 });
      if (!isMounted(mp)) return;
    } catch (err) {
      errors.push(`${cmd}: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
    }
  }
  if (isMounted(mp)) throw new Error(`unmount ${mp} failed: ${errors.join('; ') || 'still mounted'}`);
}

/** Same as lazyUnmount, synchronously (for the process 'exit' event): aborts the connection first. */
export function lazyUnmountSync(mountpoint: string): void {
  const mp = resolve(mountpoint);
  if (!isMounted(mp)) return;
  abortConnection(mp);
  if (process.getuid?.() === 0) {
    spawnSync('umount', ['-l', '-c', mp], { stdio: 'ignore', timeout: 10_000 });
  } else {
    const r = spawnSync('fusermount3', ['-uz', mp], { stdio: 'ignore', timeout: 10_000 });
    if (r.status !== 0) spawnSync('fusermount', ['-uz', mp], { stdio: 'ignore', timeout: 10_000 });
  }
}

// ---------------------------------------------------------------------- mounts of this process

export interface TrackedMount {
  readonly mountpoint: string;
  unmount(): Promise<void>;
}

const active = new Set<TrackedMount>();

/** Bindings call this for every mount they make, and untrackMount when it is unmounted. */
export function trackMount(m: TrackedMount): void {
  active.add(m);
}

export function untrackMount(m: TrackedMount): void {
  active.delete(m);
}

/** Unmounts every mount this process made; errors are logged, never thrown. */
export async function unmountAll(logger: Logger = silentLogger): Promise<void> {
  await Promise.all(
    [...active].map(async (m) => {
      try {
        await m.unmount();
      } catch (err) {
        logger.warn({ err, mountpoint: m.mountpoint }, 'fuse: unmount failed; detaching lazily');
        try {
          await lazyUnmount(m.mountpoint);
          untrackMount(m);
        } catch (err2) {
          logger.error({ err: err2, mountpoint: m.mountpoint }, 'fuse: lazy unmount failed');
        }
      }
    }),
  );
}

function unmountAllSync(): void {
  for (const m of active) {
    try {
      lazyUnmountSync(m.mountpoint);
    } catch {
      // exiting: nothing more to do
    }
  }
  active.clear();
}

let registered: (() => void) | undefined;

/**
 * Makes sure no mount of this process outlives it: on SIGINT/SIGTERM every mount is unmounted and the
 * process exits with 128+signal (unless the application has its own handler for the signal, which then
 * decides when to exit); on an uncaught exception or unhandled rejection and at 'exit' the remaining mounts
 * are detached synchronously (connection aborted, lazy unmount). Idempotent; returns a function that removes
 * the handlers.
 */
export function unmountAllOnExit(logger: Logger = silentLogger): () => void {
  if (registered) return registered;
  const onSignal = (signal: NodeJS.Signals) => {
    logger.info({ signal, mounts: active.size }, 'fuse: unmounting on signal');
    const others = process.listenerCount(signal) > 1;
    unmountAll(logger)
      .catch((err: unknown) => logger.error({ err }, 'fuse: unmounting on signal failed'))
      .finally(() => {
        if (!others) process.exit(128 + (signal === 'SIGINT' ? 2 : 15));
      });
  };
  const onFatal = (err: unknown) => {
    logger.fatal({ err, mounts: active.size }, 'fuse: fatal error, detaching mounts');
    unmountAllSync();
  };
  const onExit = () => unmountAllSync();
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('uncaughtExceptionMonitor', onFatal);
  process.on('exit', onExit);
  registered = () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('uncaughtExceptionMonitor', onFatal);
    process.off('exit', onExit);
    registered = undefined;
  };
  return registered;
}

// ---------------------------------------------------------------------- stale mounts

/** Whether a mount answers: 'dead' when its serving process is gone (ENOTCONN), 'hung' when stat times out. */
export async function probeMount(mountpoint: string, timeoutMs = 3000): Promise<'alive' | 'dead' | 'hung'> {
  // In a child process: a stat on a mount whose server hangs would otherwise pin a libuv thread forever.
  try {
    // statfs, not stat: the kernel answers stat of a mount root from its attribute cache (long attr timeouts)
    // even after the server died; statfs always goes to the server (ENOTCONN when it is gone).
    await execFileP('stat', ['-f', '-c', '%i', '--', mountpoint], {
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
    });
    return 'alive';
  } catch (err) {
    const e = err as { stderr?: string; killed?: boolean };
    if (e.killed) return 'hung';
    if (/not connected/i.test(e.stderr ?? '')) return 'dead';
    return 'alive';
  }
}

export interface StaleMountResult {
  mountpoint: string;
  state: 'dead' | 'hung' | 'alive';
  unmounted: boolean;
  error?: string;
}

/**
 * Finds FUSE mounts at or under `dir` (a state directory) whose serving process is gone and detaches them:
 * a mount left by a killed dfnode answers ENOTCONN. Live mounts (another dfnode still serves them) are left
 * alone; hung ones too, unless `includeHung`. Deepest mounts first.
 */
export async function cleanupStaleMounts(
  dir: string,
  opts: { logger?: Logger; includeHung?: boolean; probeTimeoutMs?: number } = {},
): Promise<StaleMountResult[]> {
  const logger = opts.logger ?? silentLogger;
  const root = resolve(dir);
  const candidates = readMountInfo()
    .filter((m) => isFuseType(m.fstype) && (m.mountpoint === root || m.mountpoint.startsWith(root + sep)))
    .map((m) => m.mountpoint)
    .filter((mp, i, all) => all.indexOf(mp) === i)
    .sort((a, b) => b.length - a.length);
  const results: StaleMountResult[] = [];
  for (const mp of candidates) {
    const state = await probeMount(mp, opts.probeTimeoutMs);
    const r: StaleMountResult = { mountpoint: mp, state, unmounted: false };
    if (state === 'dead' || (state === 'hung' && opts.includeHung)) {
      try {
        if (state === 'hung') abortConnection(mp);
        await lazyUnmount(mp);
        r.unmounted = true;
        logger.info({ mountpoint: mp, state }, 'fuse: cleaned up a stale mount');
      } catch (err) {
        r.error = (err as Error).message;
        logger.warn({ mountpoint: mp, err }, 'fuse: could not clean up a stale mount');
      }
    }
    results.push(r);
  }
  return results;
}

/** Mountpoints at or below `dir`, deepest first (from /proc/self/mountinfo). */
export function mountsBelow(dir: string): string[] {
  const root = resolve(dir);
  return readMountInfo()
    .map((m) => m.mountpoint)
    .filter((mp) => mp === root || mp.startsWith(root + sep))
    .sort((a, b) => b.length - a.length);
}

/** Detaches everything mounted at or below `dir`, deepest first (a scratch directory being removed). */
export async function unmountUnder(dir: string): Promise<void> {
  for (const mp of mountsBelow(dir)) await lazyUnmount(mp).catch(() => undefined);
}

/** For 'exit' handlers: aborts FUSE connections and detaches everything below `dir`, synchronously. */
export function unmountUnderSync(dir: string): void {
  for (const mp of mountsBelow(dir)) lazyUnmountSync(mp);
}
