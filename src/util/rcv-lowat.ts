import type { Socket } from 'node:net';
import { netAddon, socketFd, type NetAddon } from './net-addon.js';

/**
 * Fewer wake-ups per response on a slow link. A 1 MiB answer at 20 Mbit/s reaches the process in hundreds of
 * reads of a segment or two, and every read costs a trip through the event loop, the socket and the HTTP
 * parser: per-read work, not per-byte work, is what a node spends its CPU on there (bench/dataplane). With
 * SO_RCVLOWAT set to what is left of the body (at most the limit below), epoll reports the socket readable
 * once that much is queued, so the process wakes about once per limit's bytes.
 *
 * The mark is only ever the exact number of body bytes still to come (or fewer), and back at 1 once the
 * body is complete, so a socket never waits for bytes that will not be sent; a closing peer or a nearly full
 * receive window wakes it regardless (the kernel's rule). A body that trickles (less than the mark within
 * FALLBACK_MS) is not held back either: the mark drops to 1 after FALLBACK_MS without a read, so the client
 * still hears of every byte within about that long (its stall limits count any progress, and a read that
 * waits on the body's first block gets it). A fill run, which nobody waits on, may be held back longer
 * (FILL_HOLD_MS): a connection that shares a slow link with others then wakes per full mark instead of at
 * every fallback (bench/dataplane at 20 Mbit/s shared by four connections: every read had come by the
 * fallback, and a node spent about a fifth more CPU per GiB).
 *
 * A body held longer than FALLBACK_MS (a fill run's, which nobody waits on: the caller's holdMs says so) may
 * have a higher mark, FILL_LIMIT: at 20 Mbit/s a 64 KiB mark still woke a node about 40 times a second per
 * connection, and those wake-ups, not the bytes, were most of its CPU (bench/dataplane: node A from the seed
 * 14-16 CPU-s/GiB with 64 KiB, ~10 with 256 KiB; at 200 Mbit/s and above 4-10 either way). A read that
 * starts waiting on such a body gets FALLBACK_MS back from its holdMs at the next read, and the 64 KiB mark.
 *
 * Plain TCP only (a TLS record's framing is not the body's length). Off without the native addon
 * (native/dfnode_net.c) or with DFNODE_RCVLOWAT=0; DFNODE_RCVLOWAT=N sets the limit in bytes (default 65536),
 * DFNODE_RCVLOWAT_FILL=N the fill bodies' (default 262144, never below the other).
 */
const DEFAULT_LIMIT = 64 * 1024;
const DEFAULT_FILL_LIMIT = 256 * 1024;

let addon: NetAddon | null | undefined;
let limit = DEFAULT_LIMIT;
let fillLimit = DEFAULT_FILL_LIMIT;

const envBytes = (name: string, dflt: number): number => {
  const env = process.env[name];
  return env !== undefined && env !== '' ? Math.max(0, Math.min(Number(env) || 0, 16 << 20)) : dflt;
};

function lowatAddon(): NetAddon | null {
  if (addon !== undefined) return addon;
  limit = envBytes('DFNODE_RCVLOWAT', DEFAULT_LIMIT);
  fillLimit = Math.max(limit, envBytes('DFNODE_RCVLOWAT_FILL', DEFAULT_FILL_LIMIT));
  return (addon = limit <= 1 ? null : netAddon());
}

/** Whether low-water marks are in use in this process. */
export function rcvLowatEnabled(): boolean {
  return lowatAddon() !== null;
}

/** After this long without a read, a socket's mark goes back to 1 (ms). */
export const FALLBACK_MS = 100;
/** The same for a body nobody waits on (a fill run's), at most. */
export const FILL_HOLD_MS = 1000;

/**
 * How long a fill run's body may be held back when its transfer counts as stalled after `stallMs` without
 * a byte: FILL_HOLD_MS, or a quarter of that limit when it is short (tests use limits of a few 100 ms).
 */
export function fillHoldMs(stallMs: number): number {
  return Math.max(FALLBACK_MS, Math.min(FILL_HOLD_MS, Math.floor(stallMs / 4)));
}

interface Mark {
  value: number;
  /** Drops the mark to 1 when no read came for `holdMs`; refreshed by every read. */
  timer?: ReturnType<typeof setTimeout>;
  holdMs: number;
}
/** The mark set on each tracked socket (1 when absent). */
const marks = new WeakMap<Socket, Mark>();

/**
 * Called by the HTTP client before each read of a body with the body bytes still to come on the socket: sets
 * its low-water mark to that (at most the limit), 1 once the body is complete (src/util/raw-http.ts). The
 * mark goes back to 1 after `holdMs` without a read.
 */
export function markRemaining(s: Socket, remaining: number, holdMs = FALLBACK_MS): void {
  const a = addon;
  if (!a) return;
  const want = Math.max(1, Math.min(remaining, holdMs > FALLBACK_MS ? fillLimit : limit));
  let m = marks.get(s);
  if (!m) marks.set(s, (m = { value: 1, holdMs }));
  if (m.timer && m.holdMs !== holdMs) {
    // another body on this connection, held back for another time
    clearTimeout(m.timer);
    m.timer = undefined;
  }
  m.holdMs = holdMs;
  if (want > 1) {
    // a read came: the fallback starts again
    if (m.timer) m.timer.refresh();
    else {
      const mark = m;
      mark.timer = setTimeout(() => {
        mark.timer = undefined;
        // the socket's own descriptor, now (a closed socket has none: its number may be another file's)
        const fd = socketFd(s);
        if (fd !== undefined && mark.value > 1 && a.setRcvLowat(fd, 1)) mark.value = 1;
      }, holdMs);
      mark.timer.unref();
    }
  } else if (m.timer) {
    clearTimeout(m.timer);
    m.timer = undefined;
  }
  if (m.value === want) return;
  const fd = socketFd(s);
  if (fd !== undefined && a.setRcvLowat(fd, want)) m.value = want;
}

/** How a source's HTTP client may hold a range's body back for fewer wake-ups (src/util/rcv-lowat.ts). */
export interface BodyHoldHooks {
  /**
   * How long the body's bytes may wait in the socket for a full low-water mark, asked before each read
   * (default FALLBACK_MS): longer while nobody waits on them.
   */
  holdMs?: () => number;
  /** Given how to stop holding the body's bytes back at once (FetchContext.onHurry). */
  onHurry?: (hurry: () => void) => void;
}
