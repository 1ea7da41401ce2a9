import type { Logger } from '../log.js';

/**
 * Logs at most `burst` errors per `windowMs`; the rest are counted and reported as one line when the next
 * window opens. A failing remote can fail every read of a container: the log must not become the bottleneck.
 */
export class RateLimitedLog {
  private windowStart = 0;
  private inWindow = 0;
  private suppressed = 0;

  constructor(
    private readonly logger: Logger,
    private readonly burst = 10,
    private readonly windowMs = 10_000,
    private readonly now: () => number = Date.now,
  ) {}

  error(obj: Record<string, unknown>, msg: string): void {
    const t = this.now();
    if (t - this.windowStart >= this.windowMs) {
      if (this.suppressed > 0) {
        this.logger.error({ suppressed: this.suppressed }, 'fuse: more handler errors were not logged');
      }
      this.windowStart = t;
      this.inWindow = 0;
      this.suppressed = 0;
    }
    if (this.inWindow < this.burst) {
      this.inWindow++;
      this.logger.error(obj, msg);
    } else {
      this.suppressed++;
    }
  }
}
