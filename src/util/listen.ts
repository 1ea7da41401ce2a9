import type { Server } from 'node:net';
import { DfError } from '../errors.js';

/**
 * Starts `server` listening on host:port with the timeouts every dfnode HTTP listener uses (a client that
 * sends its headers slowly, or never, holds nothing for long). An address in use is a CONFIG error naming
 * `setting`, the key that chooses it.
 */
export function listenTcp(
  server: Server & { headersTimeout?: number; requestTimeout?: number },
  host: string,
  port: number,
  what: string,
  setting: string,
): Promise<void> {
  server.headersTimeout = 20_000;
  server.requestTimeout = 60_000;
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
