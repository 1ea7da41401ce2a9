import { connect } from 'node:net';

/**
 * Whether a live process accepts connections on the unix socket `path` (bounded: a listener that does not
 * answer within `timeoutMs` counts as live, so that we never delete a socket someone may still serve).
 * A missing file or one nobody listens on (ECONNREFUSED: left by a crash) is not served.
 */
export function socketServed(path: string, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolveServed) => {
    const sock = connect(path);
    const done = (served: boolean) => {
      clearTimeout(timer);
      sock.destroy();
      resolveServed(served);
    };
    const timer = setTimeout(() => done(true), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', (err: NodeJS.ErrnoException) => done(err.code === 'EAGAIN'));
  });
}
