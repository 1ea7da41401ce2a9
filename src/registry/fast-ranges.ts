import { DfError } from '../errors.js';
import type { BodyHoldHooks } from '../util/rcv-lowat.js';
import { RawHttpPool } from '../util/raw-http.js';
import { rcvLowatEnabled } from '../util/rcv-lowat.js';
import { stallSignal } from '../util/stall-signal.js';
import { realTimers } from '../util/timers.js';
import { parseContentRange, type BodyProgress } from './http-body.js';

/**
 * Range reads of a blob on raw sockets (src/util/raw-http.ts: the body read by the kernel straight into the
 * range's buffer, with SO_RCVLOWAT on plain TCP) instead of undici, whose path per socket read (a stream, its
 * parser, a copy) made a node fetching from a registry at 20 Mbit/s spend ~25 CPU-s per GiB where the same
 * node fetching from a seed spent ~10 (bench/dataplane, "node C from the registry").
 *
 * Only where the full path (auth, redirects, retries, error mapping: transport.ts) has just shown the way: a
 * 206 answer of this blob from the registry's own origin (no redirect to another host, whose signed URLs may
 * bind their Host header) is remembered for LANE_MS with the headers that were sent (its Authorization), and
 * later ranges of the blob go straight there. Anything but the exact 206 asked for (a 401 after the token
 * expired, a redirect, an error, a short body, a network failure) drops the lane and the full path takes the
 * request, so nothing fails here that would not fail there; the blob then gets no lane for LANE_MS (a lane
 * that cannot work, e.g. a proxy in the way, costs one try a minute, not one per request).
 */
export const LANE_MS = 60_000;
/** Lanes kept at most (the oldest go first). */
const MAX_LANES = 512;

interface Lane {
  https: boolean;
  address: string;
  path: string;
  headers: Record<string, string>;
  until: number;
}

/** The answer was not the range asked for: the full path takes it. */
class LaneMiss extends DfError {
  constructor(why: string) {
    super('REGISTRY', `fast range: ${why}`);
  }
}

export interface FastRangeOptions extends BodyHoldHooks {
  signal?: AbortSignal;
  progress?: BodyProgress;
}

export class FastRanges {
  private readonly lanes = new Map<string, Lane>();
  /** Blobs whose lane failed → until when none is learned again (a lane that fails is not retried per request). */
  private readonly refused = new Map<string, number>();
  private readonly pools: { http: RawHttpPool; https: RawHttpPool };
  /** Ranges served here, and lanes dropped (the full path took over). */
  readonly counts = { served: 0, dropped: 0 };

  /** `timeoutMs`: a lane request that hears nothing for this long is given up (the full path's body timeout). */
  constructor(
    private readonly timeoutMs: number,
    private readonly now: () => number = Date.now,
  ) {
    const base = { connectTimeoutMs: timeoutMs, maxPerHost: 16, idleMs: 30_000 };
    this.pools = {
      http: new RawHttpPool({ ...base, lowat: rcvLowatEnabled() }),
      https: new RawHttpPool({ ...base, tls: {}, lowat: false }),
    };
  }

  /**
   * Remembers where a range of `key`'s blob was just answered with 206 on the registry's own origin (the
   * caller checks: transport's sameOrigin), and with which request headers.
   */
  learn(key: string, url: URL, sent: Record<string, string>): void {
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return;
    const refusedUntil = this.refused.get(key);
    if (refusedUntil !== undefined) {
      if (refusedUntil > this.now()) return;
      this.refused.delete(key);
    }
    const https = url.protocol === 'https:';
    const headers: Record<string, string> = {};
    for (const k of ['authorization', 'user-agent']) if (sent[k] !== undefined) headers[k] = sent[k]!;
    this.lanes.delete(key);
    if (this.lanes.size >= MAX_LANES) this.lanes.delete(this.lanes.keys().next().value!);
    this.lanes.set(key, {
      https,
      address: `${url.hostname}:${url.port || (https ? 443 : 80)}`,
      path: url.pathname + url.search,
      headers,
      until: this.now() + LANE_MS,
    });
  }

  /**
   * Exactly `length` bytes at `offset` of `key`'s blob through its lane, or undefined when there is none (or
   * it failed: dropped, and the caller takes the full path). Rejects only with the signal's reason.
   */
  async get(key: string, offset: number, length: number, o: FastRangeOptions): Promise<Buffer | undefined> {
    const lane = this.lanes.get(key);
    if (!lane) return undefined;
    if (lane.until <= this.now()) {
      this.lanes.delete(key);
      return undefined;
    }
    const end = offset + length - 1;
    const signal = o.signal ?? new AbortController().signal;
    // the caller's abort, or nothing heard for timeoutMs (raw-http has no timers of its own)
    const rq = stallSignal(signal, {
      firstMs: this.timeoutMs,
      idleMs: this.timeoutMs,
      maxMs: Infinity,
      timers: realTimers,
      what: `registry range of ${key}`,
    });
    try {
      const res = await (lane.https ? this.pools.https : this.pools.http).request(lane.address, {
        path: lane.path,
        headers: { ...lane.headers, range: `bytes=${offset}-${end}` },
        signal: rq.signal,
        onHead: (status, headers) => {
          rq.alive();
          if (status !== 206) return new LaneMiss(`HTTP ${status}`);
          const cr = parseContentRange(
            typeof headers['content-range'] === 'string' ? headers['content-range'] : undefined,
          );
          if (!cr || cr.start !== offset || cr.end !== end) return new LaneMiss('another range');
          return { into: Buffer.allocUnsafe(length), tooLong: () => new LaneMiss('a longer body') };
        },
        progress: (data, filled) => {
          rq.alive();
          o.progress?.(data, filled);
        },
        holdMs: o.holdMs,
        onHurry: o.onHurry,
      });
      // a 206 (onHead refused anything else) whose connection closed before its end
      if (res.got !== length) throw new LaneMiss(`${res.got} of ${length} bytes`);
      this.counts.served++;
      return res.body;
    } catch (err) {
      if (signal.aborted) throw err;
      if (this.lanes.get(key) === lane) this.lanes.delete(key);
      this.counts.dropped++;
      if (this.refused.size >= MAX_LANES) this.refused.delete(this.refused.keys().next().value!);
      this.refused.set(key, this.now() + LANE_MS);
      return undefined;
    } finally {
      rq.dispose();
    }
  }

  async close(): Promise<void> {
    this.lanes.clear();
    await Promise.all([this.pools.http.close(), this.pools.https.close()]);
  }
}
