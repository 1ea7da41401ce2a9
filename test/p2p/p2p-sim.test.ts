import { describe, expect, it } from 'vitest';
import { DEFAULT_SIM, simulate } from '../../bench/lib/p2p-sim.js';
import { svgLinePlot } from '../../bench/lib/svg-plot.js';
import { midRunStore } from '../../bench/lib/sim-core.js';

// The simulation drives the real planner and tracker on a virtual clock: these check the model around them
// (links, conservation of bytes, bounds), on small layers so that they run in well under a second.
const small = { ...DEFAULT_SIM, blobBytes: 8 << 20 };

describe('P2P simulation (bench/lib/p2p-sim.ts)', () => {
  it('one host: the layer arrives in the time its link takes, and the registry sends it once', () => {
    const r = simulate({ ...small, hosts: 1 });
    expect(r.finished).toBe(1);
    const size = (8 << 20) + (64 << 10);
    const ideal = (size * 8) / (small.nodeMbit * 1e6); // node link is the bottleneck (seed 20, registry 40)
    expect(r.meanS).toBeGreaterThanOrEqual(ideal);
    // plus request round trips, 200 ms planner waits, step resolution and the seed's first registry fetch
    // (a store-and-forward seed would add whole runs: 1.7 s per 4 MiB)
    expect(r.meanS).toBeLessThan(ideal + 1.2);
    expect(r.registryEgress).toBeCloseTo(1, 6);
    expect(r.fromSeed).toBe(1);
  });

  it('many hosts: every host gets every byte, each block leaves the registry once, peers carry most', () => {
    const r = simulate({ ...small, hosts: 12 });
    expect(r.finished).toBe(12);
    expect(r.registryEgress).toBeCloseTo(1, 6);
    expect(r.fromPeers + r.fromSeed).toBeCloseTo(1, 6);
    expect(r.fromPeers).toBeGreaterThan(0.5);
    // the seed's upload alone (20 Mbit/s) could not have sent 12 copies in this time
    const seedOnly = (12 * (8 << 20) * 8) / (small.seedMbit * 1e6);
    expect(r.maxS).toBeLessThan(seedOnly);
    expect(r.announces).toBeGreaterThan(12);
    expect(r.lookups).toBeGreaterThan(12);
    // every lookup rides on an announce, as P2pNode sends them: one call for both
    expect(r.calls).toBe(r.announces);
  });

  it("stores a run's arrived units per minBytes, as RunWriter does, and nothing when minBytes is 0", () => {
    const stored: number[][] = [];
    // units 10..15 of 100 bytes each: a 600-byte run, stored per 250 bytes pending
    const progress = midRunStore(
      [10, 11, 12, 13, 14, 15],
      () => 100,
      600,
      250,
      (u) => stored.push(u),
    )!;
    progress(550); // 50 arrived: no whole unit
    progress(350); // 250 arrived: units 10, 11 (200 pending)
    expect(stored).toEqual([]);
    progress(250); // 350: 10, 11, 12 (300 pending)
    expect(stored).toEqual([[10, 11, 12]]);
    progress(150); // 450: 13 (100 pending)
    progress(0.5); // 599.5: 14 (200 pending); 15 is the run end's
    expect(stored).toEqual([[10, 11, 12]]);
    expect(
      midRunStore(
        [1],
        () => 100,
        100,
        0,
        () => undefined,
      ),
    ).toBeUndefined();
  });

  it('is repeatable for a seed and differs across seeds', () => {
    const a = simulate({ ...small, hosts: 6, rngSeed: 7 });
    const b = simulate({ ...small, hosts: 6, rngSeed: 7 });
    const c = simulate({ ...small, hosts: 6, rngSeed: 8 });
    expect(b.times).toEqual(a.times);
    expect(c.times).not.toEqual(a.times);
  });

  it('upload slots: holders refuse runs beyond them, askers go elsewhere, everyone finishes', () => {
    const one = simulate({ ...small, hosts: 12, uploadSlots: 1 });
    expect(one.busyRefusals).toBeGreaterThan(0);
    expect(one.finished).toBe(12);
    expect(one.registryEgress).toBeCloseTo(1, 6);
    const none = simulate({ ...small, hosts: 12, uploadSlots: 0 });
    expect(none.busyRefusals).toBe(0);
    expect(none.finished).toBe(12);
  });

  it('upload slots: a run waits a moment for a taken slot, handed over without exceeding the slots', () => {
    const at = (slotWaitMs: number) =>
      simulate({ ...small, hosts: 12, uploadSlots: 1, sendBufferBytes: 0, slotWaitMs, slotWaiters: 2 });
    const refused = at(0);
    expect(refused.slotWaits).toBe(0);
    const waiting = at(150);
    expect(waiting.slotWaits).toBeGreaterThan(0);
    expect(waiting.busyRefusals).toBeLessThan(refused.busyRefusals);
    expect(waiting.peakNodeUploads).toBe(1);
    expect(waiting.finished).toBe(12);
    expect(waiting.registryEgress).toBeCloseTo(1, 6);
  });

  it("a holder's slot is free once the rest of its run fits in its send buffer", () => {
    const exact = simulate({ ...small, hosts: 12, uploadSlots: 1, sendBufferBytes: 0 });
    expect(exact.peakNodeUploads).toBe(1);
    // runs overlap at the holder while their tails leave from the kernel's buffer: fewer refusals
    const buffered = simulate({ ...small, hosts: 12, uploadSlots: 1, sendBufferBytes: 256 << 10 });
    expect(buffered.peakNodeUploads).toBeGreaterThan(1);
    expect(buffered.busyRefusals).toBeLessThan(exact.busyRefusals);
    expect(buffered.finished).toBe(12);
    expect(buffered.registryEgress).toBeCloseTo(1, 6);
  });

  it("a swarm larger than the tracker's bound: the refused hosts still finish, from the seed", () => {
    const r = simulate({ ...small, hosts: 8, maxPeersPerBlob: 3 });
    expect(r.refusedAnnounces).toBeGreaterThan(0);
    expect(r.finished).toBe(8);
    expect(r.registryEgress).toBeCloseTo(1, 6);
  });

  it('a machine with too few cores for the traffic slows every transfer down', () => {
    const free = simulate({ ...small, hosts: 4 });
    const bound = simulate({
      ...small,
      hosts: 4,
      machineCores: 0.05,
      cpuRecvSecPerGiB: 60,
      cpuSendSecPerGiB: 60,
    });
    expect(bound.meanS).toBeGreaterThan(free.meanS * 1.5);
  });
});

it('svgLinePlot draws each series with its points and legend', () => {
  const svg = svgLinePlot({
    title: 'a <b>',
    xLabel: 'x',
    yLabel: 'y',
    logX: true,
    series: [
      {
        name: 'mean',
        points: [
          [16, 10],
          [1000, 30],
        ],
      },
      {
        name: 'max',
        points: [
          [16, 12],
          [1000, 40],
        ],
      },
    ],
  });
  expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
  expect(svg.trim().endsWith('</svg>')).toBe(true);
  expect(svg.match(/<circle /g)?.length).toBe(4);
  expect(svg).toContain('>mean<');
  expect(svg).toContain('a &lt;b&gt;');
});
