// What the tests of the native FUSE addon need: the addon built (it is built here when missing or stale),
// root and /dev/fuse, plus whatever else a test names.
import { existsSync } from 'node:fs';
import { ensureNativeAddon } from '../../native/build-addon.js';
import { NativeFuseBinding } from '../../src/fuse/native-binding.js';
import { requireConditions, type Requirement } from './require.js';

export function requireNativeMounts(extra: Record<string, boolean> = {}): Requirement {
  const buildProblem = ensureNativeAddon();
  return requireConditions({
    [`native addon built (${buildProblem ?? ''})`]: !buildProblem && NativeFuseBinding.available(),
    'root (FUSE mounts)': process.getuid?.() === 0,
    '/dev/fuse': existsSync('/dev/fuse'),
    ...extra,
  });
}
