import { describe, expect, it } from 'vitest';
import { countUp } from '../../src/util/count-up.js';

describe('countUp', () => {
  it('counts per key and, when full, forgets only the key counted least recently', () => {
    const m = new Map<string, number>();
    expect(countUp(m, 'trickler', 4)).toBe(1);
    expect(countUp(m, 'a', 4)).toBe(1);
    expect(countUp(m, 'b', 4)).toBe(1);
    expect(countUp(m, 'trickler', 4)).toBe(2);
    expect(countUp(m, 'c', 4)).toBe(1);
    // full (4 keys): a new key pushes out 'a', the least recently counted, and keeps the trickler's count
    expect(countUp(m, 'd', 4)).toBe(1);
    expect([...m.keys()]).toEqual(['b', 'trickler', 'c', 'd']);
    expect(countUp(m, 'trickler', 4)).toBe(3);
    expect(m.size).toBe(4);
  });

  it('never holds more than cap keys, however many are made up', () => {
    const m = new Map<string, number>();
    countUp(m, 'trickler', 256);
    countUp(m, 'trickler', 256);
    for (let i = 0; i < 255; i++) countUp(m, `made-up-${i}`, 256);
    // 255 flooding keys fit beside it (the old table was cleared whole at 256 entries)
    expect(m.get('trickler')).toBe(2);
    for (let i = 255; i < 10_000; i++) countUp(m, `made-up-${i}`, 256);
    expect(m.size).toBe(256);
  });
});
