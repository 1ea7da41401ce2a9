import type { Socket } from 'node:net';
import { netAddon, socketFd } from './net-addon.js';
import { realTimers, type Timers } from './timers.js';

/**
 * When has an answer left? A server's last write returns once the kernel has taken the bytes, and a busy
 * uplink keeps a few hundred KB of them in the socket's send queue (bench/p2p at 20 Mbit/s: 150 KB at the
 * median, 300 KB at the 75th percentile, up to 1 MB): a quarter to a half second more of sending. The block
 * server holds a peer's upload slot until then (src/p2p/block-server.ts), so that its slots count the runs
 * its uplink really carries.
 *
 * The queue is the socket's userland buffer plus the kernel's send queue (SIOCOUTQ: not yet sent, and sent
 * but not acknowledged), through the native addon (native/dfnode_net.c). Without the addon, or for a socket
 * without a descriptor of its own, the answer counts as gone at once (the behaviour before).
 */

/** Bytes written to `s` that have not left yet (userland and kernel), or undefined when unknown. */
export function sendQueueBytes(s: Socket): number | undefined {
  const a = netAddon();
  // an addon built before sendQueue existed has none
  if (typeof a?.sendQueue !== 'function' || s.destroyed) return undefined;
  const fd = socketFd(s);
  if (fd === undefined) return undefined;
  const n = a.sendQueue(fd);
  return n < 0 ? undefined : n + s.writableLength;
}

export interface WhenSentOptions {
  /**
   * How often the queue is looked at at first (ms; default 20). Once it is seen shrinking, the next look is
   * when it should be down to the tail at the rate it has drained so far, between pollMs and maxPollMs.
   */
  pollMs?: number;
  /** Longest wait between two looks (ms; default 8 × pollMs). */
  maxPollMs?: number;
  /** Resolve when the queue has not shrunk for this long (a peer that stopped reading; ms; default 1000). */
  stallMs?: number;
  /** Resolve after this long whatever is left (a peer that reads a trickle; ms; default 10,000). */
  maxMs?: number;
  timers?: Timers;
}

/**
 * Resolves once the bytes written to `s` have nearly left (at most `tailBytes` queued: the next answer may
 * start while they go), the socket closed, the queue stopped shrinking for `stallMs`, `maxMs` passed, or the
 * queue cannot be known. Never rejects.
 */
export function whenSent(s: Socket, tailBytes: number, opts: WhenSentOptions = {}): Promise<void> {
  const o = { pollMs: 20, stallMs: 1000, maxMs: 10_000, tailBytes, ...opts };
  const maxPollMs = Math.max(o.pollMs, opts.maxPollMs ?? 8 * o.pollMs);
  const timers = o.timers ?? realTimers;
  const first = sendQueueBytes(s);
  if (first === undefined || first <= o.tailBytes) return Promise.resolve();
  return new Promise((resolve) => {
    let last = first;
    const start = timers.now();
    let since = start;
    const done = () => {
      s.off('close', done);
      resolve();
    };
    s.once('close', done);
    const look = () => {
      if (s.destroyed) return done();
      const n = sendQueueBytes(s);
      if (n === undefined || n <= o.tailBytes) return done();
      const now = timers.now();
      if (n < last) {
        last = n;
        since = now;
      } else if (now - since >= o.stallMs) return done();
      if (now - start >= o.maxMs) return done();
      // a look costs a system call: at 20 Mbit/s an answer's last few hundred KB take 0.1–0.5 s to leave
      const rate = (first - n) / Math.max(1, now - start);
      const eta = rate > 0 ? (n - o.tailBytes) / rate : o.pollMs;
      const until = Math.min(o.stallMs - (now - since), o.maxMs - (now - start));
      timers.setTimeout(look, Math.max(1, Math.min(Math.max(o.pollMs, eta), maxPollMs, until)));
    };
    timers.setTimeout(look, o.pollMs);
  });
}
