import { expect } from 'vitest';
import { DfError } from '../../src/errors.js';

/** The DfError a promise rejects with (the test fails if it resolves or rejects with anything else). */
export async function rejection(p: Promise<unknown>): Promise<DfError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(DfError);
  return e as DfError;
}
