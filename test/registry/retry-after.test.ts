import { describe, expect, it } from 'vitest';
import { parseRetryAfter, retryAfterText } from '../../src/registry/retry-after.js';

describe('Retry-After', () => {
  const now = Date.parse('2026-12-07T12:00:00Z');
  it('reads delay-seconds and HTTP-dates; refuses anything else', () => {
    expect(parseRetryAfter('0', now)).toBe(0);
    expect(parseRetryAfter(' 120 ', now)).toBe(120_000);
    expect(parseRetryAfter(['5', '9'], now)).toBe(5000);
    expect(parseRetryAfter('Mon, 07 Dec 2026 12:00:30 GMT', now)).toBe(30_000);
    // a date in the past: now
    expect(parseRetryAfter('Mon, 07 Dec 2026 11:00:00 GMT', now)).toBe(0);
    for (const bad of [undefined, '', '-1', '1.5', '1e3', '99999999999', 'soon', 'Mon, 99 Foo 2026', 'NaN'])
      expect(parseRetryAfter(bad, now), String(bad)).toBeUndefined();
  });
  it('says the wait in words', () => {
    expect(retryAfterText(1)).toBe('1 s');
    expect(retryAfterText(90_000)).toBe('90 s');
    expect(retryAfterText(3_600_000)).toBe('60 min');
    expect(retryAfterText(86_400_000)).toBe('24 h');
  });
});
