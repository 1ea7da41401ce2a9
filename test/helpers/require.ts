import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Whether an executable is on PATH. */
export function hasTool(name: string): boolean {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {
      // keep looking
    }
  }
  return false;
}

export interface Requirement {
  /** True when the tests must be skipped (never in CI). */
  skip: boolean;
  /** Why, for the test output. */
  reason: string;
}

/**
 * Checks a test file's prerequisites. Missing ones skip the tests with a printed reason locally;
 * in CI (`CI` set) they throw, because CI installs everything and must never skip.
 *
 *   const req = requireTools(['docker-registry', 'htpasswd']);
 *   describe.skipIf(req.skip)('registry', () => { ... });
 */
export function requireTools(names: string[], extra: { check?: () => string | undefined } = {}): Requirement {
  const missing = names.filter((n) => !hasTool(n));
  const problems = missing.map((n) => `${n} not found in PATH`);
  const more = extra.check?.();
  if (more) problems.push(more);
  return requirement(problems);
}

/** Same as requireTools for arbitrary conditions (root, /dev/fuse, a kernel feature). */
export function requireConditions(conditions: Record<string, boolean>): Requirement {
  return requirement(
    Object.entries(conditions)
      .filter(([, ok]) => !ok)
      .map(([what]) => what),
  );
}

function requirement(problems: string[]): Requirement {
  if (problems.length === 0) return { skip: false, reason: '' };
  const reason = problems.join('; ');
  if (process.env.CI) {
    throw new Error(`test prerequisites missing in CI (CI must not skip): ${reason}`);
  }
  console.warn(`[skip] ${reason}`);
  return { skip: true, reason };
}
