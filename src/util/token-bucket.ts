import { sleep, realTimers, type Timers } from './timers.js';

/**
 * A byte-rate limiter. take(n) waits until n bytes may go: the bucket holds up to `burst` bytes and
 * refills at `rate` bytes/s; a request larger than the bucket drives it into debt that later calls
 * wait out. rate 0 = unlimited. Callers are served in order.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;
  private tail: Promise<void> = Promise.resolve();

  constructor(
    private rate: number,
    private readonly burst = Math.max(rate, 1),
    private readonly timers: Timers = realTimers,
  ) {
    this.tokens = burst;
    this.last = timers.now();
  }

  setRate(rate: number): void {
    this.refill();
    this.rate = rate;
  }

  take(n: number, signal?: AbortSignal): Promise<void> {
    if (this.rate <= 0) return Promise.resolve();
    const p = this.tail.then(() => this.wait(n, signal));
    this.tail = p.catch(() => {});
    return p;
  }

  private refill(): void {
    const now = this.timers.now();
    if (this.rate > 0)
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.rate) / 1000);
    this.last = now;
  }

  private async wait(n: number, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    this.refill();
    // wait until the bucket is not in debt, then take (possibly going into debt)
    while (this.tokens < Math.min(n, this.burst) && this.rate > 0) {
      const need = Math.min(n, this.burst) - this.tokens;
      await sleep(this.timers, Math.max(1, Math.ceil((need * 1000) / this.rate)), signal);
      this.refill();
    }
    this.tokens -= n;
  }
}
