/**
 * UploadSlots (src/p2p/upload-slots.ts): a node's fill-run slots, with a short wait in arrival order for
 * one to free before a run is refused as busy. Fake timers: the wait, its end, and an asker that leaves.
 */
import { describe, expect, it } from 'vitest';
import { UploadSlots } from '../../src/p2p/upload-slots.js';
import { manualTimers } from '../helpers/manual-timers.js';

describe('UploadSlots', () => {
  it('grants free slots at once, then hands freed slots to waiters in arrival order', async () => {
    const t = manualTimers();
    const s = new UploadSlots(2, { waitMs: 100, maxWaiters: 2, timers: t.timers });
    expect(s.acquire()).toBe(true);
    expect(s.acquire()).toBe(true);
    const order: string[] = [];
    const w1 = Promise.resolve(s.acquire()).then((ok) => order.push(`w1 ${ok}`));
    const w2 = Promise.resolve(s.acquire()).then((ok) => order.push(`w2 ${ok}`));
    expect(s.waiting).toBe(2);
    // more than maxWaiters do not wait
    expect(s.acquire()).toBe(false);
    s.release();
    s.release();
    await Promise.all([w1, w2]);
    expect(order).toEqual(['w1 true', 'w2 true']);
    expect(s.taken).toBe(2);
    expect(t.pending()).toBe(0);
    s.release();
    s.release();
    expect(s.taken).toBe(0);
    // never below zero
    s.release();
    expect(s.acquire()).toBe(true);
    expect(s.taken).toBe(1);
  });

  it('refuses a waiter when no slot frees in time, or when its asker aborts', async () => {
    const t = manualTimers();
    const s = new UploadSlots(1, { waitMs: 100, timers: t.timers });
    expect(s.acquire()).toBe(true);
    const late = s.acquire();
    t.advance(99);
    expect(s.waiting).toBe(1);
    t.advance(1);
    expect(await late).toBe(false);
    expect(s.waiting).toBe(0);
    const ac = new AbortController();
    const left = s.acquire(ac.signal);
    ac.abort();
    expect(await left).toBe(false);
    expect(s.waiting).toBe(0);
    expect(t.pending()).toBe(0);
    // a slot freed with nobody waiting is free
    s.release();
    expect(s.taken).toBe(0);
    expect(new UploadSlots(1, { waitMs: 0 }).acquire()).toBe(true);
  });

  it('lets one run wait by default', () => {
    const s = new UploadSlots(4, { timers: manualTimers().timers });
    for (let i = 0; i < 4; i++) expect(s.acquire()).toBe(true);
    expect(s.acquire()).toBeInstanceOf(Promise);
    expect(s.acquire()).toBe(false);
    expect(s.waiting).toBe(1);
  });

  it('does not wait with a wait of 0, and has no limit with 0 slots', () => {
    const s = new UploadSlots(1, { waitMs: 0 });
    expect(s.acquire()).toBe(true);
    expect(s.acquire()).toBe(false);
    const none = new UploadSlots(0);
    for (let i = 0; i < 10; i++) expect(none.acquire()).toBe(true);
    expect(none.taken).toBe(0);
  });
});
