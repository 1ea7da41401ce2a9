import { mkdir, readFile, rename, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DfError } from '../errors.js';
import { splitHostPort } from '../util/listen.js';

/** First line of every hosts.toml dfnode writes: files without it belong to someone else. */
export const HOSTS_MARKER =
  '# written by dfnode mirror-setup: the registry mirror of this node (edits are overwritten)';

/**
 * hosts.toml that sends pulls to the mirror first; containerd falls back to the registry itself (its
 * `server`, by default the registry host) when the mirror does not answer.
 */
export function containerdHostsToml(mirror: string): string {
  splitHostPort(mirror);
  return `${HOSTS_MARKER}\n[host."http://${mirror}"]\n  capabilities = ["pull", "resolve"]\n`;
}

const hostDir = (registry: string) => {
  if (registry !== '_default' && !/^[A-Za-z0-9.-]+(:[0-9]{1,5})?$/.test(registry))
    throw DfError.invalidArgument(
      `invalid registry host "${registry}" (host[:port], or _default for every registry)`,
    );
  return registry;
};

/**
 * Writes `<dir>/<registry>/hosts.toml` (registry `_default`: every registry without a directory of its own,
 * containerd 1.6 and later) pointing at the mirror. A hosts.toml dfnode did not write is left alone unless
 * `force`. Returns whether the file changed.
 */
export async function writeContainerdHosts(
  dir: string,
  mirror: string,
  opts: { registry?: string; force?: boolean } = {},
): Promise<'written' | 'unchanged'> {
  const d = join(dir, hostDir(opts.registry ?? '_default'));
  const file = join(d, 'hosts.toml');
  const want = containerdHostsToml(mirror);
  const have = await readFile(file, 'utf8').catch(() => undefined);
  if (have === want) return 'unchanged';
  if (have !== undefined && !have.startsWith(HOSTS_MARKER) && !opts.force)
    throw new DfError(
      'ALREADY_EXISTS',
      `${file} exists and was not written by dfnode; merge the mirror into it by hand (deploy/mirror/hosts.toml) or pass --force to replace it`,
    );
  await mkdir(d, { recursive: true });
  const tmp = `${file}.dfnode-tmp`;
  await writeFile(tmp, want, { mode: 0o644 });
  await rename(tmp, file);
  return 'written';
}

/** Removes a hosts.toml dfnode wrote (and its directory when empty); false when there was none of ours. */
export async function removeContainerdHosts(dir: string, registry = '_default'): Promise<boolean> {
  const d = join(dir, hostDir(registry));
  const file = join(d, 'hosts.toml');
  const have = await readFile(file, 'utf8').catch(() => undefined);
  if (have === undefined || !have.startsWith(HOSTS_MARKER)) return false;
  await rm(file);
  await rmdir(d).catch(() => undefined); // not empty: certificates of the user's stay
  return true;
}
