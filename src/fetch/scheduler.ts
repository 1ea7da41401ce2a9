import { realTimers, type Timers } from '../util/timers.js';
import { Priority } from './types.js';

/** A queued or running unit of work, whose priority can be raised while it waits. */
export interface ScheduledTask<T> {
  readonly promise: Promise<T>;
  /** Moves the task to a more urgent queue if it has not started yet. */
  promote(priority: Priority): void;
  /** Drops the task if it has not started (its promise rejects with `reason`); false when it runs already. */
  cancel(reason: unknown): boolean;
}

interface Job {
  priority: Priority;
  run: () => void;
  started: boolean;
}

export interface FetchSchedulerOptions {
  /** Tasks running at once, all priorities together. Default 8. */
  concurrency?: number;
  /** At most this many Fill tasks run at once, so that fill never takes every slot. Default concurrency/2. */
  maxFill?: number;
  /**
   * Fill does not start while any Blocked or Prefetch task runs or waits, nor for this long after the last one
   * ended (ms): on a thin link a 4 MiB fill run in flight would delay the small reads a starting container
   * is blocked on. Default 250; 0 disables the hold-off (fill still waits for queued urgent work).
   */
  fillHoldOffMs?: number;
  /**
   * For this long after the last urgent task (ms), fill runs one request at a time and asks for small runs
   * (fillTurn): a container that is starting reads in bursts with pauses, and a 4 MiB run caught in flight
   * when the next burst comes would delay it. Default 5000.
   */
  fillWarmupMs?: number;
  /** Largest fill run during the warm-up (bytes). Default 256 KiB. */
  fillWarmupRunBytes?: number;
  /**
   * Fill waits for urgent work (default). False: fill runs beside urgent work (which still queues first).
   */
  fillYields?: boolean;
  /**
   * With fillYields: fill waits only while at least this many urgent tasks run or wait. Default 1 (any). A
   * seed uses more: its fill goes on in the gaps of nodes' requests, which keeps its link busy, and yields
   * once they alone can fill it.
   */
  fillYieldAt?: number;
  timers?: Timers;
}

/**
 * A concurrency limit with three queues: when a slot frees, the oldest task of the most urgent priority
 * runs. Shared by all fetchers of a node, so that background fill of any layer yields to any blocked read.
 */
export class FetchScheduler {
  readonly concurrency: number;
  readonly maxFill: number;
  private readonly queues: Job[][] = [[], [], []];
  private active = 0;
  private activeFill = 0;
  private lastUrgentEnd = -Infinity;
  private readonly holdOffMs: number;
  private readonly warmupMs: number;
  private readonly warmupRunBytes: number;
  private readonly fillYields: boolean;
  private readonly fillYieldAt: number;
  private readonly timers: Timers;
  private wakeup: unknown;
  private fillWaiters: Array<() => void> = [];

  constructor(opts: FetchSchedulerOptions = {}) {
    this.concurrency = Math.max(1, opts.concurrency ?? 8);
    this.maxFill = Math.max(1, Math.min(this.concurrency, opts.maxFill ?? Math.ceil(this.concurrency / 2)));
    this.holdOffMs = Math.max(0, opts.fillHoldOffMs ?? 250);
    this.warmupMs = Math.max(0, opts.fillWarmupMs ?? 5000);
    this.warmupRunBytes = Math.max(1, opts.fillWarmupRunBytes ?? 256 * 1024);
    this.fillYields = opts.fillYields ?? true;
    this.fillYieldAt = Math.max(1, opts.fillYieldAt ?? 1);
    this.timers = opts.timers ?? realTimers;
  }

  get running(): number {
    return this.active;
  }
  queued(priority?: Priority): number {
    return priority === undefined
      ? this.queues.reduce((n, q) => n + q.length, 0)
      : this.queues[priority]!.length;
  }

  schedule<T>(priority: Priority, fn: () => Promise<T>): ScheduledTask<T> {
    let resolve!: (v: T) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<T>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const job: Job = {
      priority,
      started: false,
      run: () => {
        const fill = job.priority === Priority.Fill;
        this.active++;
        if (fill) this.activeFill++;
        let p: Promise<T>;
        try {
          p = fn();
        } catch (err) {
          p = Promise.reject(err);
        }
        p.then(resolve, reject).finally(() => {
          this.active--;
          if (fill) this.activeFill--;
          else this.lastUrgentEnd = this.timers.now();
          this.pump();
        });
      },
    };
    this.queues[priority]!.push(job);
    this.pump();
    return {
      promise,
      promote: (p: Priority) => {
        if (job.started || p >= job.priority) return;
        const q = this.queues[job.priority]!;
        const i = q.indexOf(job);
        if (i >= 0) q.splice(i, 1);
        job.priority = p;
        this.queues[p]!.push(job);
        this.pump();
      },
      cancel: (reason: unknown) => {
        if (job.started) return false;
        const q = this.queues[job.priority]!;
        const i = q.indexOf(job);
        if (i >= 0) q.splice(i, 1);
        job.started = true;
        reject(reason);
        this.pump();
        return true;
      },
    };
  }

  /** Convenience: schedule and wait. */
  run<T>(priority: Priority, fn: () => Promise<T>): Promise<T> {
    return this.schedule(priority, fn).promise;
  }

  /** Whether urgent work ended less than the warm-up ago (or never ran yet: false). */
  private warm(): boolean {
    return this.timers.now() - this.lastUrgentEnd < this.warmupMs;
  }

  /**
   * Waits until background fill may issue its next run and says how large that run may be: small during
   * the warm-up after on-demand reads, `maxRunBytes` once reads have been quiet for a while.
   */
  async fillTurn(maxRunBytes: number, signal?: AbortSignal): Promise<number> {
    while (this.fillHeld() || this.activeFill >= (this.warm() ? 1 : this.maxFill)) {
      signal?.throwIfAborted();
      await new Promise<void>((resolve) => {
        const done = () => {
          signal?.removeEventListener('abort', done);
          resolve();
        };
        this.fillWaiters.push(done);
        signal?.addEventListener('abort', done, { once: true });
      });
    }
    signal?.throwIfAborted();
    return this.warm() ? Math.min(maxRunBytes, this.warmupRunBytes) : maxRunBytes;
  }

  /**
   * Whether fill must wait: fillYieldAt urgent tasks are running or queued, or urgent work ended less than
   * the hold-off ago.
   */
  private fillHeld(): boolean {
    if (!this.fillYields) return false;
    const urgent =
      this.active -
      this.activeFill +
      this.queues[Priority.Blocked]!.length +
      this.queues[Priority.Prefetch]!.length;
    if (urgent >= this.fillYieldAt) return true;
    if (urgent > 0) return false;
    const wait = this.lastUrgentEnd + this.holdOffMs - this.timers.now();
    if (wait <= 0) return false;
    if (this.wakeup === undefined)
      this.wakeup = this.timers.setTimeout(() => {
        this.wakeup = undefined;
        this.pump();
      }, wait);
    return true;
  }

  private pump(): void {
    while (this.active < this.concurrency) {
      let job: Job | undefined;
      const maxFill = this.warm() ? 1 : this.maxFill;
      for (let p = 0; p < this.queues.length && !job; p++) {
        if (p === Priority.Fill && (this.activeFill >= maxFill || this.fillHeld())) break;
        job = this.queues[p]!.shift();
      }
      if (!job) break;
      job.started = true;
      job.run();
    }
    if (this.fillWaiters.length && !this.fillHeld()) {
      const waiters = this.fillWaiters;
      this.fillWaiters = [];
      for (const w of waiters) w();
    }
  }
}
