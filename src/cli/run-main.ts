import { setMaxListeners } from 'node:events';
import { DfError } from '../errors.js';

/**
 * Runs a command-line program: one AbortSignal for Ctrl-C/SIGTERM (a second Ctrl-C exits at once),
 * DfErrors printed as one clear line with their exit code, never a stack trace unless DFNODE_DEBUG is set.
 * `interrupted`: what the program's users should know after an interruption, appended to its message
 * (dfconvert: that nothing was tagged).
 */
export function runMain(
  name: string,
  main: (signal: AbortSignal, argv: string[]) => Promise<unknown>,
  opts: { interrupted?: string } = {},
): void {
  const ac = new AbortController();
  // the whole program's operations listen to it, many at once
  setMaxListeners(0, ac.signal);
  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupts++;
    if (interrupts > 1) process.exit(130);
    process.stderr.write(`\n${name}: ${sig} received, stopping...\n`);
    ac.abort(DfError.aborted(`interrupted by ${sig}`));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // The event loop ran dry while main() was still pending: some await can never finish (a bug). Node would
  // exit with code 0, and a caller would take an unfinished conversion or pull for a success.
  let settled = false;
  const onBeforeExit = () => {
    if (settled) return;
    settled = true;
    process.stderr.write(
      `${name}: error: internal error: stopped with work still pending; the command did not finish (please report this)\n`,
    );
    process.exitCode = DfError.internal('').exitCode;
  };
  process.on('beforeExit', onBeforeExit);
  main(ac.signal, process.argv)
    .finally(() => {
      settled = true;
      process.removeListener('beforeExit', onBeforeExit);
    })
    .then(() => {
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
    })
    .catch((err: unknown) => {
      let e = DfError.from(err);
      // whatever failed after Ctrl-C (an operation's own "aborted", a child's exit) was the interruption
      if (ac.signal.aborted && !e.message.startsWith('interrupted'))
        e = DfError.aborted(`interrupted: ${e.message}`, { cause: err });
      if (e.code === 'ABORTED' && opts.interrupted)
        e = new DfError('ABORTED', `${e.message}; ${opts.interrupted}`, { cause: err });
      process.stderr.write(`${name}: error: ${e.message}\n`);
      if (process.env.DFNODE_DEBUG) process.stderr.write(String((err as Error)?.stack ?? err) + '\n');
      else if (e.code === 'INTERNAL') process.stderr.write(`${name}: (set DFNODE_DEBUG=1 for details)\n`);
      process.exitCode = e.exitCode;
    });
}
