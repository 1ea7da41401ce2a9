import { afterEach } from 'vitest';

/**
 * A list of cleanups (servers, temporary directories, clients) that run after each test, the last one
 * pushed first, also when the test failed.
 */
export function cleanupsAfterEach(): Array<() => unknown> {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    while (cleanups.length) await cleanups.pop()!();
  });
  return cleanups;
}
