/**
 * A run's verified units go into the cache while the rest of the run is still arriving (RunWriter): one write
 * at a time, what arrives meanwhile in the next one, in unit order, once enough is pending or it has waited
 * long enough (also when the source stalls). Through a real LayerCore and BlobCache: a
 * source sends the first blocks of a run and holds the rest; those blocks are already present (and told to
 * the cache's listeners, which announce them to peers) before the run ends.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { Priority, type BlobRef, type BlockSource, type FetchContext } from '../../src/fetch/types.js';
import { RunWriter, type VerifiedUnit } from '../../src/fetch/run-writer.js';
import { UnitLayout } from '../../src/p2p/unit-layout.js';
import { gate, manualClock } from './helpers.js';
import { open, runCleanups, setup, type Setup } from './layer-setup.js';

afterEach(runCleanups);

const unit = (u: number): VerifiedUnit<{ unit: number }> => ({
  waiter: { unit: u },
  unitOff: u * 10,
  stored: Buffer.alloc(10, u),
});

const settle = () => new Promise((r) => setTimeout(r, 1));

describe('RunWriter', () => {
  it('keeps one write in flight, batches what arrives meanwhile, and groups adjacent units', async () => {
    const writes: number[][] = [];
    const held: Array<() => void> = [];
    const w = new RunWriter<{ unit: number }>(
      async (group) => {
        writes.push(group.map((g) => g.waiter.unit));
        await new Promise<void>((r) => held.push(r));
      },
      manualClock().timers,
      { minBytes: 1 },
    );
    w.add(unit(0));
    w.add(unit(1));
    w.nudge();
    await Promise.resolve();
    expect(writes).toEqual([[0, 1]]);
    // arrives during the write: waits for it
    w.add(unit(2));
    w.add(unit(4));
    w.nudge();
    await Promise.resolve();
    expect(writes).toEqual([[0, 1]]);
    const done = w.flush();
    held.shift()!();
    // the next batch: 2 and 4 are not adjacent, two writes in order
    while (writes.length < 2) await settle();
    expect(writes).toEqual([[0, 1], [2]]);
    held.shift()!();
    while (writes.length < 3) await settle();
    expect(writes).toEqual([[0, 1], [2], [4]]);
    held.shift()!();
    await done;
    // nothing new: flush resolves without a write
    await w.flush();
    expect(writes).toHaveLength(3);
  });

  it('mid-run, writes once enough bytes are pending or the oldest has waited long enough, even if stalled', async () => {
    const writes: number[][] = [];
    const clock = manualClock();
    const w = new RunWriter<{ unit: number }>(
      async (group) => void writes.push(group.map((g) => g.waiter.unit)),
      clock.timers,
      { minBytes: 30, maxAgeMs: 500 },
    );
    // 20 bytes: below the bound, too young
    w.add(unit(0));
    w.add(unit(1));
    w.nudge();
    await settle();
    expect(writes).toEqual([]);
    // the third unit makes 30 bytes
    w.add(unit(2));
    w.nudge();
    await settle();
    expect(writes).toEqual([[0, 1, 2]]);
    // one small unit, then nothing more arrives (a stalled source): written when it is 500 ms old
    clock.advance(100);
    w.add(unit(3));
    w.nudge();
    clock.advance(499);
    await settle();
    expect(writes).toHaveLength(1);
    clock.advance(1);
    await settle();
    expect(writes).toEqual([[0, 1, 2], [3]]);
    // the end of the run writes the rest whatever its size, and leaves no timer behind
    w.add(unit(4));
    w.nudge();
    await w.flush();
    expect(writes).toEqual([[0, 1, 2], [3], [4]]);
    clock.advance(10_000);
    await settle();
    expect(writes).toHaveLength(3);
  });
});

/**
 * Units 3..12 of the test blob as one run: its range, the first two blocks' length (`head`), and a source
 * that answers other ranges at once and this one through `answer` (which may hold it back).
 */
function heldRun(
  s: Setup,
  answer: (out: Buffer, head: number, ctx: FetchContext | undefined, sig: AbortSignal) => Promise<Buffer>,
) {
  const layout = new UnitLayout(s.tb.toc, s.tb.blob.size);
  const first = 3;
  const last = 12;
  const offset = layout.offset(first);
  const length = layout.offset(last + 1) - offset;
  const head = layout.offset(first + 2) - offset;
  const units = Array.from({ length: last - first + 1 }, (_, i) => first + i);
  const source: BlockSource = {
    name: 'held registry',
    kind: 'registry',
    fetch: async (_b: BlobRef, o: number, n: number, sig: AbortSignal, ctx?: FetchContext) => {
      const out = Buffer.alloc(n);
      s.tb.bytes.copy(out, 0, o, o + n);
      return o === offset ? answer(out, head, ctx, sig) : out;
    },
  };
  return { first, units, source, bytes: s.tb.bytes.subarray(offset, offset + length) };
}

describe('a run stored as it arrives', () => {
  it('has its first blocks in the cache, told to listeners, while the rest of the run is held back', async () => {
    const s = await setup();
    const held = gate();
    const headSent = gate();
    const { first, units, source, bytes } = heldRun(s, async (out, head, ctx) => {
      // blocks 3 and 4, then nothing until the test lets the rest go
      ctx?.progress?.(out, head);
      headSent.open();
      await held.promise;
      ctx?.progress?.(out, out.length);
      return out;
    });
    const { cache, core } = await open(s, { sources: [source] });
    const told: number[] = [];
    cache.addUnitListener({ present: (u) => told.push(u), reset: () => undefined });
    const run = core.fetcher.units(units, Priority.Fill);
    await headSent.promise;
    // two small blocks, then a stall: written when they have waited MID_RUN_WRITE_MS
    for (let i = 0; i < 600 && !(cache.has(first) && cache.has(first + 1)); i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    expect(cache.has(first), 'block 3 is in the cache before the run ends').toBe(true);
    expect(cache.has(first + 1)).toBe(true);
    expect(cache.has(first + 2)).toBe(false);
    expect(told).toEqual(expect.arrayContaining([first, first + 1]));
    held.open();
    const got = await run;
    expect(Buffer.concat(got).equals(bytes)).toBe(true);
    for (const u of units) expect(cache.has(u)).toBe(true);
  });

  it('a run given up mid-way keeps its verified blocks, and a new fetch of the same units completes', async () => {
    const s = await setup();
    let calls = 0;
    const headSent = gate();
    const { first, units, source, bytes } = heldRun(s, async (out, head, ctx, sig) => {
      // the second time: slower than the first run's mid-run write delay (a late write of it would land here)
      if (calls++ > 0) {
        await new Promise((r) => setTimeout(r, 800));
        return out;
      }
      // the first time: two blocks, then nothing until the run is given up
      ctx?.progress?.(out, head);
      headSent.open();
      await new Promise((_r, reject) =>
        sig.addEventListener('abort', () => reject(sig.reason), { once: true }),
      );
      return out;
    });
    const { cache, core } = await open(s, { sources: [source] });
    const ac = new AbortController();
    const given = core.fetcher.ensure(units, Priority.Fill, { signal: ac.signal });
    await headSent.promise;
    ac.abort();
    const settled = await Promise.allSettled(given);
    // the two verified blocks were kept (written when the run was given up), the rest was dropped
    expect(settled.slice(0, 2).map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    expect(settled.slice(2).every((r) => r.status === 'rejected')).toBe(true);
    expect(cache.has(first) && cache.has(first + 1)).toBe(true);
    // asked again at once: a new run, whose units nothing of the old one settles (it would hang)
    const again = await Promise.race([
      core.fetcher.units(units, Priority.Fill),
      new Promise<'hung'>((r) => setTimeout(() => r('hung'), 3_000)),
    ]);
    expect(again).not.toBe('hung');
    expect(Buffer.concat(again as Buffer[]).equals(bytes)).toBe(true);
  });
});
