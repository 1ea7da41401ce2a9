import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';

const CHILD = fileURLToPath(new URL('./pool-close-child.ts', import.meta.url));

// A failed conversion cleans up by closing its compression pool with nothing else pending. That await once
// let the process end with exit code 0 in the middle of the cleanup, so dfconvert reported success for a
// truncated layer (idle workers are unref'd, and terminating them did not hold the event loop).
// Both pools: the addon's native threads (a batch in flight must hold the event loop too) and the worker
// threads of the JavaScript path.
for (const [what, env] of [
  ['native threads', {}],
  ['worker threads', { DFNODE_CONVERT_ADDON: 'none' }],
] as const) {
  it(`closing a compression pool keeps the process alive until its threads are gone (${what})`, async () => {
    const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', CHILD, '30'], {
      timeout: 120_000,
      env: { ...process.env, ...env },
    });
    expect(stdout).toBe('closed\n');
  }, 150_000);
}
