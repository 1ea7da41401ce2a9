import { describe, expect, it } from 'vitest';
import { PreheatHolds } from '../../src/daemon/control-preheat.js';

const counter = () => {
  const c = { released: 0, release: async () => void c.released++ };
  return c;
};

describe('PreheatHolds: layers of a daemon preheat kept open for a while', () => {
  it('releases each hold after ms, not before', async () => {
    const h = new PreheatHolds(150);
    const a = counter();
    const b = counter();
    h.hold(a.release);
    await new Promise((r) => setTimeout(r, 60));
    h.hold(b.release);
    expect(h.size).toBe(2);
    await new Promise((r) => setTimeout(r, 120));
    expect([a.released, b.released]).toEqual([1, 0]);
    await new Promise((r) => setTimeout(r, 120));
    expect([a.released, b.released]).toEqual([1, 1]);
    expect(h.size).toBe(0);
  });

  it('ms 0 releases at once; close releases what is held, and later holds at once', async () => {
    const zero = new PreheatHolds(0);
    const z = counter();
    zero.hold(z.release);
    await Promise.resolve();
    expect(z.released).toBe(1);
    expect(zero.size).toBe(0);

    const h = new PreheatHolds(60_000);
    const a = counter();
    h.hold(a.release);
    expect(a.released).toBe(0);
    await h.close();
    expect(a.released).toBe(1);
    const b = counter();
    h.hold(b.release);
    await Promise.resolve();
    expect(b.released).toBe(1);
    // a release that fails is logged, not thrown
    const warned: unknown[] = [];
    const f = new PreheatHolds(0, { warn: (o: unknown) => warned.push(o) } as never);
    f.hold(() => Promise.reject(new Error('boom')));
    await new Promise((r) => setTimeout(r, 10));
    expect(warned).toHaveLength(1);
  });

  it('releaseOldest gives back the oldest hold first, one per call, and false when none is held', async () => {
    const h = new PreheatHolds(60_000);
    const a = counter();
    const b = counter();
    h.hold(a.release);
    h.hold(b.release);
    expect(await h.releaseOldest()).toBe(true);
    expect([a.released, b.released]).toEqual([1, 0]);
    expect(h.size).toBe(1);
    expect(await h.releaseOldest()).toBe(true);
    expect([a.released, b.released]).toEqual([1, 1]);
    expect(await h.releaseOldest()).toBe(false);
    // its timer is gone too: nothing is released twice
    await h.close();
    expect([a.released, b.released]).toEqual([1, 1]);
  });
});
