// A child process for dir-lock.test.ts: on {op:'acquire', dir} it tries DirLock.acquire(dir) and answers
// {won} (holding the lock when it won); on {op:'release'} it releases what it holds and answers {released}.
import { DirLock } from '../../src/cache/dir-lock.js';

let held: DirLock | undefined;
process.on('message', (m: { op: string; dir?: string; name?: string }) => {
  const answer = (x: unknown) => process.send?.(x);
  if (m.op === 'acquire' && m.dir) {
    DirLock.acquire(m.dir, process.pid, { name: m.name }).then(
      (l) => {
        held = l;
        answer({ won: true });
      },
      (err: Error) => answer({ won: false, message: err.message }),
    );
  } else if (m.op === 'release') {
    const l = held;
    held = undefined;
    (l ? l.release() : Promise.resolve()).then(
      () => answer({ released: true }),
      () => answer({ released: true }),
    );
  }
});
process.send?.({ ready: true });
