import { DfError } from '../errors.js';
import { runCommand } from './system.js';

/**
 * Mounts a read-only merged view of layer directories at `target`, top layer first in `lowers`
 * (overlayfs needs two or more lower directories without an upper; a single layer is bind-mounted).
 */
export async function mountReadOnlyView(lowersTopFirst: string[], target: string): Promise<void> {
  if (lowersTopFirst.length === 0) throw DfError.invalidArgument('an image without layers cannot be mounted');
  if (lowersTopFirst.some((l) => /[,:]/.test(l)))
    throw DfError.invalidArgument(`layer paths must not contain ',' or ':' (${lowersTopFirst.join(' ')})`);
  if (lowersTopFirst.length === 1) {
    await runCommand('mount', ['--bind', lowersTopFirst[0]!, target]);
    await runCommand('mount', ['-o', 'remount,bind,ro', target]).catch(() => undefined);
    return;
  }
  await runCommand('mount', [
    '-t',
    'overlay',
    'overlay',
    '-o',
    `ro,lowerdir=${lowersTopFirst.join(':')}`,
    target,
  ]);
}
