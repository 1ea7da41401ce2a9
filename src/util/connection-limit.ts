import type { Server, Socket } from 'node:net';

/**
 * How many TCP connections a listener keeps open at once: in all (`max`, the kernel's accepted connections
 * beyond it are closed at once, before Node builds anything for them) and from one remote address
 * (`perAddress`). An idle connection costs a process about 9 KiB (measured: 5,000 idle HTTP connections,
 * +45 MB resident), and Node closes one that sends no request only after its headers timeout (up to 50 s),
 * so without a bound a flood of connections, which needs no token, grows a daemon's memory without end.
 */
export interface ConnectionLimit {
  max: number;
  /** 0: no bound per address (a loopback listener, whose clients all come from one address). */
  perAddress?: number;
  /** Told of every connection closed for a bound, with its remote address and which bound. */
  onRefused?: (address: string, bound: 'total' | 'address') => void;
}

/** Applies `limit` to `server` (before it listens). */
export function limitConnections(server: Server, limit: ConnectionLimit): void {
  server.maxConnections = limit.max;
  server.on('drop', (d?: { remoteAddress?: string }) => limit.onRefused?.(d?.remoteAddress ?? '?', 'total'));
  const perAddress = limit.perAddress ?? 0;
  if (perAddress <= 0) return;
  const open = new Map<string, number>();
  server.on('connection', (sock: Socket) => {
    const from = sock.remoteAddress ?? '?';
    const n = open.get(from) ?? 0;
    if (n >= perAddress) {
      sock.destroy();
      limit.onRefused?.(from, 'address');
      return;
    }
    open.set(from, n + 1);
    sock.once('close', () => {
      const left = (open.get(from) ?? 1) - 1;
      if (left > 0) open.set(from, left);
      else open.delete(from);
    });
  });
}
