import { createRequire } from 'node:module';
import type { Socket } from 'node:net';
import { nativeBuildPath } from './native-path.js';

const require = createRequire(import.meta.url);

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
 * still hears of every byte within about that long (its stall limits count any progress).
 *
 * Plain TCP only (a TLS record's framing is not the body's length). Off without the native addon
 * (native/dfnode_net.c) or with DFNODE_RCVLOWAT=0; DFNODE_RCVLOWAT=N sets the limit in bytes (default 65536).
 */
interface NetAddon {
  setRcvLowat(fd: number, bytes: number): boolean;
}

const DEFAULT_LIMIT = 64 * 1024;

let addon: NetAddon | null | undefined;
let limit = DEFAULT_LIMIT;

function netAddon(): NetAddon | null {
  if (addon !== undefined) return addon;
  const env = process.env.DFNODE_RCVLOWAT;
  if (env !== undefined && env !== '') limit = Math.max(0, Math.min(Number(env) || 0, 16 << 20));
  if (limit <= 1) return (addon = null);
  try {
    addon = require(nativeBuildPath('dfnode_net.node')) as NetAddon;
  } catch {
    addon = null;
  }
  return addon;
}

/** Whether low-water marks are in use in this process. */
export function rcvLowatEnabled(): boolean {
  return netAddon() !== null;
}

/** After this long without a read, a socket's mark goes back to 1 (ms). */
export const FALLBACK_MS = 100;

interface Mark {
  value: number;
  /** Drops the mark to 1 when no read came for FALLBACK_MS; refreshed by every read. */
  timer?: ReturnType<typeof setTimeout>;
}
/** The mark set on each tracked socket (1 when absent). */
const marks = new WeakMap<Socket, Mark>();

const fdOf = (s: Socket): number | undefined => {
  const fd = (s as unknown as { _handle?: { fd?: number } | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
};

/**
 * Called by the HTTP client before each read of a body with the body bytes still to come on the socket: sets
 * its low-water mark to that (at most the limit), 1 once the body is complete (src/util/raw-http.ts).
 */
export function markRemaining(s: Socket, remaining: number): void {
  const a = addon;
  if (!a) return;
  const want = Math.max(1, Math.min(remaining, limit));
  let m = marks.get(s);
  if (!m) marks.set(s, (m = { value: 1 }));
  if (want > 1) {
    // a read came: the fallback starts again
    if (m.timer) m.timer.refresh();
    else {
      const mark = m;
      mark.timer = setTimeout(() => {
        mark.timer = undefined;
        // the socket's own descriptor, now (a closed socket has none: its number may be another file's)
        const fd = fdOf(s);
        if (fd !== undefined && mark.value > 1 && a.setRcvLowat(fd, 1)) mark.value = 1;
      }, FALLBACK_MS);
      mark.timer.unref();
    }
  } else if (m.timer) {
    clearTimeout(m.timer);
    m.timer = undefined;
  }
  if (m.value === want) return;
  const fd = fdOf(s);
  if (fd !== undefined && a.setRcvLowat(fd, want)) m.value = want;
}
