/**
 * DfError.answer: the "busy" and "deferred" answers of sources are made without a stack trace (a seed makes
 * thousands), and are otherwise DfErrors like any other.
 */
import { describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import {
  busyAtSource,
  deferredBySource,
  isBusy,
  isDeferred,
  isSourceUnavailable,
} from '../../src/fetch/types.js';

describe('answers as errors', () => {
  it('carry no stack frames, and leave the stack trace limit as it was', () => {
    const before = Error.stackTraceLimit;
    const e = DfError.answer('NOT_FOUND', 'on its way elsewhere');
    expect(Error.stackTraceLimit).toBe(before);
    expect(e).toBeInstanceOf(DfError);
    expect(e.code).toBe('NOT_FOUND');
    expect(e.message).toBe('on its way elsewhere');
    expect(e.stack).not.toMatch(/\n\s+at /);
    // an ordinary DfError made right after still has its frames
    expect(new DfError('IO', 'x').stack).toMatch(/\n\s+at /);
  });

  it('busy and deferred keep their meaning', () => {
    const busy = busyAtSource('all slots taken');
    const deferred = deferredBySource('on its way');
    expect(isBusy(busy) && isSourceUnavailable(busy) && !isDeferred(busy)).toBe(true);
    expect(isDeferred(deferred) && isSourceUnavailable(deferred) && !isBusy(deferred)).toBe(true);
    expect(busy.stack).not.toMatch(/\n\s+at /);
    expect(deferred.stack).not.toMatch(/\n\s+at /);
  });
});
