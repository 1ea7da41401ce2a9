// Builds native/dfnode_fuse.node and native/dfnode_convert.node when missing or older than their sources
// (tests call this before checking NativeFuseBinding.available() or convertAddon()). Uses npm's bundled
// node-gyp and the local Node headers, so it needs no download; returns the reason when it cannot build (no
// compiler, no libfuse3-dev, ...).
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const addonPath = join(here, 'build', 'Release', 'dfnode_fuse.node');
/** The converter's addon (dfnode_convert.c), another target of the same binding.gyp. */
export const convertAddonPath = join(here, 'build', 'Release', 'dfnode_convert.node');
/** Socket options for the P2P block client (dfnode_net.c: SO_RCVLOWAT). */
export const netAddonPath = join(here, 'build', 'Release', 'dfnode_net.node');
/** `dfnode pull`'s client without Node (dfnode_pull.c, an executable target; bin/dfnode runs it). */
export const pullClientPath = join(here, 'build', 'Release', 'dfnode-pull');

function nodeGyp(): string | undefined {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(
      dirname(process.execPath),
      '..',
      'lib',
      'node_modules',
      'npm',
      'node_modules',
      'node-gyp',
      'bin',
      'node-gyp.js',
    ),
  ];
  return candidates.find((p): p is string => !!p && existsSync(p));
}

/** Node headers already on this machine (npm config nodedir, or the install prefix of this node). */
function nodeDir(): string | undefined {
  const candidates = [process.env.npm_config_nodedir, join(dirname(process.execPath), '..')];
  return candidates.find((d): d is string => !!d && existsSync(join(d, 'include', 'node', 'node_api.h')));
}

function upToDate(): boolean {
  const outputs = [addonPath, convertAddonPath, netAddonPath, pullClientPath];
  if (!outputs.every((p) => existsSync(p))) return false;
  const built = Math.min(...outputs.map((p) => statSync(p).mtimeMs));
  return readdirSync(here)
    .filter((f) => /\.(c|h|gyp)$/.test(f))
    .every((f) => statSync(join(here, f)).mtimeMs <= built);
}

/** Builds the addon if needed. Returns undefined when it is ready, else why it is not. */
export function ensureNativeAddon(): string | undefined {
  if (upToDate()) return undefined;
  const gyp = nodeGyp();
  if (!gyp) return 'node-gyp not found (it comes with npm)';
  const args = [gyp, 'rebuild', '-C', here];
  const nd = nodeDir();
  if (nd) args.push(`--nodedir=${nd}`);
  try {
    execFileSync(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '')
      .trim()
      .split('\n')
      .slice(-5)
      .join(' | ');
    return `building native/dfnode_fuse failed: ${stderr || (err as Error).message}`;
  }
  const missing = [addonPath, convertAddonPath].filter((p) => !existsSync(p));
  return missing.length ? `node-gyp finished but ${missing.join(' and ')} is missing` : undefined;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const why = ensureNativeAddon();
  if (why) {
    console.error(why);
    process.exit(1);
  }
  console.log(addonPath);
}
