import { DfError } from '../errors.js';

interface Waiter {
  bytes: number;
  grant: () => void;
}

/**
 * Bytes a server may hold for responses at once: a request takes its length before reading and gives it
 * back when its response is done. Requests beyond the budget wait in order (a slow client costs a socket,
 * not memory); more than `maxWaiting` waiting is refused (NO_SPACE) instead of queued without bound.
 */
export class ByteBudget {
  private used = 0;
  private readonly waiting: Waiter[] = [];

  constructor(
    private readonly total: number,
    private readonly maxWaiting: number,
  ) {}

  /** Requests waiting for bytes now. */
  get queued(): number {
    return this.waiting.length;
  }

  /** Takes `bytes` (at most the total), waiting for them; resolves with the (idempotent) release. */
  async take(bytes: number, signal: AbortSignal): Promise<() => void> {
    const n = Math.min(bytes, this.total);
    if (this.waiting.length === 0 && this.used + n <= this.total) {
      this.used += n;
      return this.releaser(n);
    }
    if (this.waiting.length >= this.maxWaiting)
      throw new DfError('NO_SPACE', `busy: ${this.waiting.length} requests are waiting already; retry later`);
    signal.throwIfAborted();
    await new Promise<void>((resolve, reject) => {
      const w: Waiter = {
        bytes: n,
        grant: () => {
          signal.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      const onAbort = () => {
        const i = this.waiting.indexOf(w);
        if (i >= 0) this.waiting.splice(i, 1);
        reject(signal.reason);
        this.next();
      };
      signal.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(w);
    });
    return this.releaser(n);
  }

  private releaser(n: number): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.used -= n;
      this.next();
    };
  }

  /** Grants waiters in order while their bytes fit. */
  private next(): void {
    while (this.waiting.length && this.used + this.waiting[0]!.bytes <= this.total) {
      const w = this.waiting.shift()!;
      this.used += w.bytes;
      w.grant();
    }
  }
}
