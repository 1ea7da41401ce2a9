import { DfError } from '../../src/errors.js';
import type { Timers } from '../../src/util/timers.js';
import type { BlobRef, BlockSource, FetchContext, SourceKind } from '../../src/fetch/types.js';
import { flipBits } from '../helpers/bytes.js';

export interface Req {
  offset: number;
  length: number;
}

/** A BlockSource over a buffer that records requests and can inject faults. */
export class FakeSource implements BlockSource {
  readonly name: string;
  requests: Req[] = [];
  bytes = 0;
  /** Corrupt the bytes at these blob offsets in the next N responses that contain them. */
  corruptAt: Array<{ offset: number; times: number }> = [];
  /** Fail the next N requests with this error. */
  failNext = 0;
  failWith: () => Error = () => new DfError('NETWORK', 'injected failure');
  /** Never answer (and ignore the abort signal). */
  hang = false;
  /** When set, each request waits for this gate before answering. */
  gate: Promise<void> | undefined;
  log: string[] = [];
  /** Requests whose fetcher asked to stop holding their bytes back (FetchContext.onHurry): a reader joined. */
  hurried: Req[] = [];

  constructor(
    readonly data: Buffer,
    readonly kind: SourceKind = 'registry',
  ) {
    this.name = `fake ${kind}`;
  }

  async fetch(
    _blob: BlobRef,
    offset: number,
    length: number,
    _signal: AbortSignal,
    ctx?: FetchContext,
  ): Promise<Buffer> {
    this.requests.push({ offset, length });
    ctx?.onHurry?.(() => this.hurried.push({ offset, length }));
    this.log.push(`${offset}+${length}`);
    if (this.hang) return new Promise<Buffer>(() => {});
    if (this.gate) await this.gate;
    if (this.failNext > 0) {
      this.failNext--;
      throw this.failWith();
    }
    const out = Buffer.from(this.data.subarray(offset, offset + length));
    for (const c of this.corruptAt) {
      if (c.times > 0 && c.offset >= offset && c.offset < offset + length) {
        c.times--;
        flipBits(out, c.offset - offset);
      }
    }
    this.bytes += out.length;
    return out;
  }

  reset(): void {
    this.requests = [];
    this.bytes = 0;
    this.log = [];
  }
}

/** A promise with its resolve function exposed. */
export function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/**
 * A clock and timers the test moves by hand: `pending` holds the timers set and not yet fired; `advance`
 * moves the clock and fires the timers then due, in the order they were set.
 */
export function manualClock(start = 0): {
  timers: Timers;
  pending: Array<{ at: number; fn: () => void }>;
  now: number;
  advance: (ms: number) => void;
} {
  const clock = {
    now: start,
    pending: [] as Array<{ at: number; fn: () => void }>,
    timers: undefined as unknown as Timers,
    advance: (ms: number) => {
      clock.now += ms;
      for (const t of clock.pending.filter((p) => p.at <= clock.now)) {
        clock.pending.splice(clock.pending.indexOf(t), 1);
        t.fn();
      }
    },
  };
  clock.timers = {
    now: () => clock.now,
    setTimeout: (fn, ms) => {
      const t = { at: clock.now + ms, fn };
      clock.pending.push(t);
      return t;
    },
    clearTimeout: (h) => {
      const i = clock.pending.indexOf(h as (typeof clock.pending)[number]);
      if (i >= 0) clock.pending.splice(i, 1);
    },
  };
  return clock;
}
