import { backoff } from '../util/backoff.js';
import { realTimers, type Timers } from '../util/timers.js';

export interface IsolationOptions {
  /** First exclusion period (ms); each further failure doubles it. Default 5 s. */
  baseMs?: number;
  /** Longest exclusion period (ms). Default 5 min. */
  maxMs?: number;
  timers?: Timers;
  /** Called when a peer is excluded (for metrics and logs). */
  onIsolate?: (peer: string, ms: number, reason: string) => void;
}

interface Record {
  strikes: number;
  until: number;
}

/**
 * Peers (or seeds) that timed out, errored or served a bad block, each excluded for a growing period:
 * base * 2^(strikes-1), capped. A success after the period forgives one strike at a time.
 */
export class Isolation {
  private readonly recs = new Map<string, Record>();
  private readonly baseMs: number;
  private readonly maxMs: number;
  private readonly timers: Timers;

  constructor(private readonly opts: IsolationOptions = {}) {
    this.baseMs = opts.baseMs ?? 5000;
    this.maxMs = Math.max(this.baseMs, opts.maxMs ?? 300_000);
    this.timers = opts.timers ?? realTimers;
  }

  /** Excludes `peer`; returns the period (ms). */
  fail(peer: string, reason: string): number {
    const r = this.recs.get(peer) ?? { strikes: 0, until: 0 };
    r.strikes++;
    const ms = backoff(r.strikes - 1, this.baseMs, this.maxMs, 'none');
    r.until = this.timers.now() + ms;
    this.recs.set(peer, r);
    this.opts.onIsolate?.(peer, ms, reason);
    return ms;
  }

  ok(peer: string): void {
    const r = this.recs.get(peer);
    if (!r || this.timers.now() < r.until) return;
    if (--r.strikes <= 0) this.recs.delete(peer);
  }

  isolated(peer: string): boolean {
    const r = this.recs.get(peer);
    return r !== undefined && this.timers.now() < r.until;
  }

  /** Failures not yet forgiven (0 for a clean peer): a reliability score for ranking. */
  strikes(peer: string): number {
    return this.recs.get(peer)?.strikes ?? 0;
  }
}
