import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, it } from 'vitest';

const RUN_MAIN = fileURLToPath(new URL('../../src/cli/run-main.ts', import.meta.url));

function run(body: string, opts = ''): Promise<{ code: number | null; stderr: string }> {
  const script = `import { runMain } from ${JSON.stringify(RUN_MAIN)};\nrunMain('prog', async (signal) => { ${body} }${opts ? `, ${opts}` : ''});`;
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script],
      { timeout: 60_000 },
      (err, _stdout, stderr) =>
        resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
    );
  });
}

it('a program whose work can never finish exits with an internal error, not 0', async () => {
  // A promise nothing will ever settle, with nothing holding the event loop: Node alone would exit 0.
  const r = await run('await new Promise(() => undefined);');
  expect(r.code).toBe(70);
  expect(r.stderr).toMatch(/prog: error: internal error: stopped with work still pending/);
}, 90_000);

it('a program that finishes exits 0 without the warning', async () => {
  const r = await run('await new Promise((r) => setTimeout(r, 10));');
  expect(r).toEqual({ code: 0, stderr: '' });
}, 90_000);

// SIGTERM to itself once the work waits on the signal: the interruption, with the program's own note only
it.each([
  ['', /^prog: error: interrupted by SIGTERM\n$/m],
  ["{ interrupted: 'nothing was tagged' }", /^prog: error: interrupted by SIGTERM; nothing was tagged$/m],
])(
  'an interruption is reported with the note the program gave (%s)',
  async (opts, want) => {
    const body =
      'await new Promise((_, reject) => { const t = setTimeout(() => undefined, 30_000); ' +
      "signal.addEventListener('abort', () => { clearTimeout(t); reject(signal.reason); }); " +
      "process.kill(process.pid, 'SIGTERM'); });";
    const r = await run(body, opts);
    expect(r.code).toBe(130);
    expect(r.stderr).toMatch(want);
    expect(r.stderr).not.toMatch(opts ? /tagged.*tagged/ : /tagged/);
  },
  90_000,
);
