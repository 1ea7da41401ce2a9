// `dfnode run --record-reads FILE`: the list is written on SIGUSR2 and again when the daemon stops (the
// recording itself through real mounts is in test/integration/dfconvert-optimize.test.ts).
import { spawn } from 'node:child_process';
import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { cliPath } from '../helpers/cli.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const cleanups = cleanupsAfterEach();

async function waitFor(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

describe('dfnode run --record-reads', () => {
  it('writes the prefetch list on SIGUSR2 and when it stops', async () => {
    const { dir, cleanup } = await tempDir('record-reads-');
    cleanups.push(cleanup);
    const list = join(dir, 'reads.jsonl');
    const child = spawn(
      process.execPath,
      [
        cliPath('dfnode'),
        'run',
        '--no-snapshotter',
        '--record-reads',
        list,
        '--cache-dir',
        join(dir, 'cache'),
        '--state-dir',
        join(dir, 'state'),
        // a listener keeps the daemon up without the snapshotter
        '--metrics-address',
        '127.0.0.1:0',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DFNODE_LOG_LEVEL: 'warn' } },
    );
    cleanups.push(async () => void (child.exitCode === null && child.kill('SIGKILL')));
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    await waitFor('dfnode running', async () => out.includes('dfnode running'));
    expect(await exists(list)).toBe(false);
    child.kill('SIGUSR2');
    await waitFor('the list after SIGUSR2', () => exists(list));
    expect(await readFile(list, 'utf8')).toBe('');
    await rm(list);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(await readFile(list, 'utf8')).toBe('');
  });
});
