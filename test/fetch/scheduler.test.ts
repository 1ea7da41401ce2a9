import { describe, expect, it } from 'vitest';
import { BlockMemoryCache } from '../../src/fetch/block-memory-cache.js';
import { FetchScheduler } from '../../src/fetch/scheduler.js';
import { TokenBucket } from '../../src/util/token-bucket.js';
import { Priority } from '../../src/fetch/types.js';
import { gate, manualClock } from './helpers.js';

const tick = () => new Promise((r) => setImmediate(r));

describe('FetchScheduler', () => {
  it('runs queued blocked work before prefetch before fill', async () => {
    const s = new FetchScheduler({ concurrency: 1 });
    const g = gate();
    const order: string[] = [];
    const job = (name: string) => async () => {
      order.push(name);
    };
    const first = s.run(Priority.Fill, () => g.promise);
    const p = [
      s.run(Priority.Fill, job('fill1')),
      s.run(Priority.Prefetch, job('pre')),
      s.run(Priority.Fill, job('fill2')),
      s.run(Priority.Blocked, job('blocked')),
    ];
    expect(s.queued()).toBe(4);
    g.open();
    await Promise.all([first, ...p]);
    expect(order).toEqual(['blocked', 'pre', 'fill1', 'fill2']);
  });

  it('holds fill back while urgent work runs and for the hold-off after it', async () => {
    const clock = manualClock(1000);
    const { pending, timers } = clock;
    const s = new FetchScheduler({ concurrency: 4, fillHoldOffMs: 250, timers });
    const g = gate();
    let filled = false;
    const urgent = s.run(Priority.Blocked, () => g.promise);
    const fill = s.run(Priority.Fill, async () => void (filled = true));
    await tick();
    expect(filled).toBe(false); // a blocked read is running: fill waits although slots are free
    g.open();
    await urgent;
    await tick();
    expect(filled).toBe(false); // within the hold-off
    clock.now += 249;
    expect(pending.length).toBe(1);
    expect(pending[0]!.at).toBe(1250);
    clock.now = pending[0]!.at;
    pending.shift()!.fn();
    await fill;
    expect(filled).toBe(true);
  });

  it('with fillYieldAt (a seed), fill goes on beside fewer urgent tasks and waits once there are that many', async () => {
    const s = new FetchScheduler({ concurrency: 16, fillHoldOffMs: 0, fillWarmupMs: 0, fillYieldAt: 3 });
    const gates = [gate(), gate(), gate()];
    const urgent = gates.map((g) => s.run(Priority.Blocked, () => g.promise));
    // three nodes' fetches run: fill waits, although slots are free
    let filled = 0;
    const fill = s.run(Priority.Fill, async () => void filled++);
    const turn = s.fillTurn(1 << 20).then(() => 'turn');
    await tick();
    expect(filled).toBe(0);
    expect(await Promise.race([turn, tick().then(() => 'waiting')])).toBe('waiting');
    // one ends: two are below the mark, so fill runs beside them at once (no hold-off)
    gates[0]!.open();
    await urgent[0];
    await tick();
    expect(filled).toBe(1);
    expect(await turn).toBe('turn');
    expect(s.running).toBe(2);
    gates[1]!.open();
    gates[2]!.open();
    await Promise.all([fill, ...urgent]);
  });

  it('fillTurn waits for the hold-off and gives small runs during the warm-up after reads', async () => {
    const clock = manualClock(0);
    const { pending, timers } = clock;
    const s = new FetchScheduler({
      fillHoldOffMs: 100,
      fillWarmupMs: 5000,
      fillWarmupRunBytes: 1000,
      timers,
    });
    // no read yet: full runs at once
    expect(await s.fillTurn(4_000_000)).toBe(4_000_000);
    await s.run(Priority.Blocked, async () => {});
    let size = 0;
    const turn = s.fillTurn(4_000_000).then((n) => (size = n));
    await tick();
    expect(size).toBe(0); // held
    clock.now = 100;
    pending.shift()!.fn();
    await turn;
    expect(size).toBe(1000); // warm-up: small run
    clock.now = 5000;
    expect(await s.fillTurn(4_000_000)).toBe(4_000_000);
  });

  it('promotes a queued task', async () => {
    const s = new FetchScheduler({ concurrency: 1 });
    const g = gate();
    const order: string[] = [];
    const first = s.run(Priority.Blocked, () => g.promise);
    const a = s.schedule(Priority.Fill, async () => void order.push('a'));
    const b = s.schedule(Priority.Prefetch, async () => void order.push('b'));
    a.promote(Priority.Blocked);
    g.open();
    await Promise.all([first, a.promise, b.promise]);
    expect(order).toEqual(['a', 'b']);
  });

  it('keeps slots for urgent work: fill never takes more than maxFill', async () => {
    const s = new FetchScheduler({ concurrency: 4, maxFill: 1 });
    const g = gate();
    const fills = [0, 1, 2].map(() => s.run(Priority.Fill, () => g.promise));
    await tick();
    expect(s.running).toBe(1);
    let ran = false;
    await s.run(Priority.Blocked, async () => void (ran = true));
    expect(ran).toBe(true);
    g.open();
    await Promise.all(fills);
  });

  it('a throwing task rejects its promise and frees its slot', async () => {
    const s = new FetchScheduler({ concurrency: 1 });
    await expect(
      s.run(Priority.Blocked, () => {
        throw new Error('x');
      }),
    ).rejects.toThrow('x');
    expect(await s.run(Priority.Blocked, async () => 7)).toBe(7);
  });
});

describe('TokenBucket', () => {
  it('waits for tokens on an injected clock; rate 0 is unlimited', async () => {
    const clock = manualClock(0);
    const { timers } = clock;
    const advance = async (ms: number) => {
      clock.advance(ms);
      await tick();
    };
    const b = new TokenBucket(1000, 1000, timers);
    await b.take(1000); // the initial burst
    let done = false;
    const p = b.take(500).then(() => (done = true));
    await tick();
    expect(done).toBe(false);
    await advance(499);
    expect(done).toBe(false);
    await advance(1);
    await p;
    expect(done).toBe(true);
    await new TokenBucket(0, 1, timers).take(1e12);
  });
});

describe('BlockMemoryCache', () => {
  it('is an LRU bounded by bytes, keyed by blob and block', () => {
    const m = new BlockMemoryCache(300);
    const a = m.blobId('sha256:a');
    const b = m.blobId('sha256:b');
    expect(m.blobId('sha256:a')).toBe(a);
    m.set(a, 0, Buffer.alloc(100));
    m.set(b, 0, Buffer.alloc(100));
    m.set(a, 1, Buffer.alloc(100));
    expect(m.get(a, 0)).toBeDefined(); // a0 is now most recent
    m.set(b, 1, Buffer.alloc(100)); // evicts b0 (least recent)
    expect(m.get(b, 0)).toBeUndefined();
    expect(m.get(a, 0)).toBeDefined();
    expect(m.bytes).toBe(300);
    m.dropBlob(a);
    expect(m.bytes).toBe(100);
    m.set(a, 2, Buffer.alloc(1000)); // larger than the cache: not kept
    expect(m.get(a, 2)).toBeUndefined();
  });
});
