// Shared settings of the fuzz tests: the case count comes from DFNODE_FUZZ_RUNS (small by default so that CI
// runs the folder in about a minute; `npm run fuzz` runs many more), and the one property every parser of
// untrusted bytes must have: it returns, or throws a DfError — never another exception.
import fc from 'fast-check';
import { DfError } from '../../src/errors.js';

export const RUNS = Math.max(1, Number(process.env.DFNODE_FUZZ_RUNS ?? 150) || 150);

/** fast-check parameters for `runs` cases (a fraction of RUNS for the slower properties). */
export function params(fraction = 1): fc.Parameters<unknown> {
  return { numRuns: Math.max(10, Math.round(RUNS * fraction)) };
}

/** A time limit for the vitest case, growing with the case count (a guard against hangs, not a measurement). */
export function timeoutFor(fraction = 1, perCaseMs = 20): number {
  return 30_000 + Math.round(RUNS * fraction) * perCaseMs;
}

/** Runs `f`; a DfError is an accepted outcome, anything else thrown fails the property (and is shrunk). */
export async function returnsOrDfError<T>(f: () => T | Promise<T>): Promise<T | DfError> {
  try {
    return await f();
  } catch (err) {
    if (err instanceof DfError) return err;
    throw err;
  }
}

export function returnsOrDfErrorSync<T>(f: () => T): T | DfError {
  try {
    return f();
  } catch (err) {
    if (err instanceof DfError) return err;
    throw err;
  }
}

/** Byte positions and values for mutations: mostly interesting u32s, sometimes random bytes. */
export const INTERESTING_U32 = [
  0, 1, 2, 3, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_fffe, 0xffff_ffff,
];

export interface Mutation {
  at: number;
  kind: 'byte' | 'u32';
  value: number;
}

/** Up to `max` mutations inside a buffer of `length` bytes. */
export function mutations(length: number, max = 4): fc.Arbitrary<Mutation[]> {
  return fc.array(
    fc.oneof(
      fc.record({ at: fc.nat(length - 1), kind: fc.constant('byte' as const), value: fc.nat(255) }),
      fc.record({
        at: fc.nat(Math.max(0, length - 4)),
        kind: fc.constant('u32' as const),
        value: fc.oneof(fc.constantFrom(...INTERESTING_U32), fc.nat({ max: 0xffff_ffff })),
      }),
    ),
    { minLength: 1, maxLength: max },
  );
}

export function applyMutations(buf: Buffer, ms: Mutation[], base = 0): Buffer {
  const out = Buffer.from(buf);
  for (const m of ms) {
    if (m.kind === 'byte') out[base + m.at] = m.value;
    else if (base + m.at + 4 <= out.length) out.writeUInt32LE(m.value >>> 0, base + m.at);
  }
  return out;
}
