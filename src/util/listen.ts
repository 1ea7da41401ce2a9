import type { Server } from 'node:net';
import { DfError } from '../errors.js';
import { limitConnections, type ConnectionLimit } from './connection-limit.js';

/**
 * Starts `server` listening on host:port with the timeouts every dfnode HTTP listener uses (a client that
 * sends its headers slowly, or never, holds nothing for long) and its bound on open connections. An address
 * in use is a CONFIG error naming `setting`, the key that chooses it.
 */
export function listenTcp(
  server: Server & { headersTimeout?: number; requestTimeout?: number },
  host: string,
  port: number,
  what: string,
  setting: string,
  limit: ConnectionLimit,
): Promise<void> {
  server.headersTimeout = 20_000;
  server.requestTimeout = 60_000;
  limitConnections(server, limit);
  return new Promise<void>((resolve, reject) => {
    server.once('error', (err) =>
      reject(
        (err as NodeJS.ErrnoException).code === 'EADDRINUSE'
          ? new DfError('CONFIG', `${what} address ${host}:${port} is in use; set ${setting}`)
          : DfError.from(err, `${what} on ${host}:${port}`),
      ),
    );
    server.listen(port, host, () => resolve());
  });
}

/** A listening address, host:port ([v6]:port; an empty host is every interface). */
export function splitHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  const host = (address.slice(0, i) || '0.0.0.0').replace(/^\[|\]$/g, '');
  const port = Number(address.slice(i + 1));
  if (i < 0 || !Number.isInteger(port) || port < 0 || port > 65535)
    throw new DfError('CONFIG', `${address} is not host:port`);
  return { host, port };
}
