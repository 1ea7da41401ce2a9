/**
 * The simulation's network (bench/lib/p2p-sim.ts): hosts' links as fluid flows sharing max-min fair rates,
 * optionally slowed to what one shared machine's cores can move, advanced in fixed time steps on the
 * simulation's virtual clock.
 */
import { maxMinRates, type Endpoint, type Flow } from './sim-core.js';

export interface LinksOptions {
  /** Flow rates are recomputed (and transfers end) every this many ms. */
  stepMs: number;
  /** Round trip of a request before its first byte (ms). */
  rttMs: number;
  /** Hosts share one machine with this many cores (0: every host has its own CPU, never the limit). */
  machineCores: number;
  /** CPU seconds per GiB a receiver spends. */
  cpuRecvSecPerGiB: number;
  /** The virtual clock: now, and an event at a time. */
  now: () => number;
  at: (t: number, fn: () => void) => void;
}

const GIB = 1024 ** 3;
/** Mbit/s in bytes per ms. */
const mbit = (m: number) => (m * 1e6) / 8 / 1000;

export class FluidLinks {
  private readonly flows = new Set<Flow>();
  private readonly recvCost: number;
  private stepping = false;
  /** Transfers waiting out their round trip: the steps go on for them. */
  private pendingStarts = 0;

  constructor(private readonly o: LinksOptions) {
    this.recvCost = o.cpuRecvSecPerGiB / GIB;
  }

  /** A host with a link of `m` Mbit/s each way, spending `sendSecPerGiB` CPU-s per GiB it sends. */
  endpoint(name: string, m: number, sendSecPerGiB: number): Endpoint {
    return {
      name,
      up: mbit(m),
      down: mbit(m),
      ups: new Set(),
      downs: new Set(),
      sendCost: sendSecPerGiB / GIB,
      peakUps: 0,
    };
  }

  /** Flows moving bytes now. */
  get active(): number {
    return this.flows.size;
  }

  /**
   * Starts a transfer after the request's round trip; the returned function cancels it (a timeout).
   * `progress` hears of the bytes still to come after each step.
   */
  transfer(
    src: Endpoint,
    dst: Endpoint,
    bytes: number,
    done: () => void,
    progress?: (remaining: number) => void,
  ): () => void {
    let flow: Flow | undefined;
    let cancelled = false;
    this.pendingStarts++;
    this.startStepping();
    this.o.at(this.o.now() + this.o.rttMs, () => {
      this.pendingStarts--;
      if (cancelled) return;
      const f: Flow = { src, dst, remaining: bytes, rate: 0, done, progress };
      flow = f;
      this.flows.add(f);
      src.ups.add(f);
      dst.downs.add(f);
      src.peakUps = Math.max(src.peakUps, src.ups.size);
      this.startStepping();
    });
    return () => {
      cancelled = true;
      if (!flow || !this.flows.has(flow)) return;
      this.remove(flow);
    };
  }

  private remove(f: Flow): void {
    this.flows.delete(f);
    f.src.ups.delete(f);
    f.dst.downs.delete(f);
  }

  /**
   * Max-min fair rates for every flow, as TCP flows sharing links roughly get; then, when one machine's CPU
   * is shared, all rates scaled down to what its cores can move.
   */
  private rerate(): void {
    const frozen = maxMinRates(this.flows);
    let scale = 1;
    if (this.o.machineCores > 0) {
      let demand = 0;
      for (const [f, r] of frozen) demand += r * 1000 * (f.src.sendCost + this.recvCost);
      if (demand > this.o.machineCores) scale = this.o.machineCores / demand;
    }
    for (const [f, r] of frozen) f.rate = r * scale;
  }

  /**
   * Time steps of `stepMs`: every flow moves rate × step bytes, finished flows end (their callbacks start the
   * next requests), then the rates are computed again for the flows now running. A flow therefore starts
   * and ends on a step boundary (stepMs of resolution, small against runs of seconds), and the cost of the
   * max-min computation is paid once per step, not once per event.
   */
  private readonly step = (): void => {
    const { stepMs } = this.o;
    const ended: Flow[] = [];
    for (const f of this.flows) {
      f.remaining -= f.rate * stepMs;
      if (f.remaining <= 1e-6) ended.push(f);
    }
    for (const f of ended) this.remove(f);
    for (const f of ended) f.done();
    for (const f of this.flows) f.progress?.(f.remaining);
    this.rerate();
    if (this.flows.size || this.pendingStarts > 0) this.o.at(this.o.now() + stepMs, this.step);
    else this.stepping = false;
  };

  private startStepping(): void {
    if (this.stepping) return;
    this.stepping = true;
    const { stepMs } = this.o;
    this.o.at(Math.ceil(this.o.now() / stepMs) * stepMs + stepMs, this.step);
  }
}
