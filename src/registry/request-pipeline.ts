import type { Dispatcher } from 'undici';
import { Agent } from '../util/undici.js';

export interface RequestPipelineOptions {
  /** Requests on the pipeline at once, all connections together. Default 4. */
  depth?: number;
  /** Connections per origin the requests are spread over. Default depth / 2 (about two on each). */
  connections?: number;
  /** undici's limits for one answer (ms): its headers, and each stall of its body. Default 30 s. */
  timeoutMs?: number;
}

/**
 * Connections per origin on which range requests are pipelined (HTTP/1.1): the next request is on the wire
 * before the answer ahead of it ends, so the origin sends the answers back to back and a connection never
 * waits a round trip between them, nor goes idle (a new answer on an idle connection restarts TCP's slow
 * start). undici sends a GET behind another once that one's head has arrived, so a connection holds about
 * two at a time. A seed's fill and nodes' planned runs go here. At most `depth` requests use it at once;
 * `lane()` answers undefined beyond that, and the caller sends on its usual dispatcher. Aborting a request
 * queued behind another ends the connection, and undici (7.x) then fails the answer in progress too
 * (ERR_ASSERTION): its caller retries it. A seed aborts only on close or on a timeout, which the older
 * request of the same size reaches first.
 */
export class RequestPipeline {
  readonly depth: number;
  private readonly agent: Agent;
  private active = 0;

  constructor(opts: RequestPipelineOptions = {}) {
    this.depth = Math.max(1, opts.depth ?? 4);
    const timeoutMs = opts.timeoutMs ?? 30_000;
    this.agent = new Agent({
      connections: Math.max(1, opts.connections ?? Math.ceil(this.depth / 2)),
      pipelining: this.depth,
      keepAliveTimeout: 30_000,
      headersTimeout: timeoutMs,
      bodyTimeout: timeoutMs,
    });
  }

  /** Requests using the pipeline now. */
  get inFlight(): number {
    return this.active;
  }

  /**
   * Runs `fn` with the pipelined dispatcher when fewer than `depth` requests use it, else with undefined
   * (the caller's own dispatcher: a request never waits behind more than depth - 1 answers).
   */
  async lane<T>(fn: (dispatcher: Dispatcher | undefined) => Promise<T>): Promise<T> {
    if (this.active >= this.depth) return fn(undefined);
    this.active++;
    try {
      return await fn(this.agent);
    } finally {
      this.active--;
    }
  }

  /** Ends the connection; requests still on it fail. */
  async close(): Promise<void> {
    await this.agent.destroy();
  }
}
