// HTTP servers on 127.0.0.1 for a test file: each on a free port, all closed (open connections first) at once.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export class LoopbackServers {
  private readonly servers: Server[] = [];

  /** Starts a server with `handler`; `addr` is its `127.0.0.1:PORT`. */
  async serve(
    handler: (req: IncomingMessage, res: ServerResponse) => void,
  ): Promise<{ server: Server; addr: string }> {
    const server = createServer(handler);
    this.servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return { server, addr: `127.0.0.1:${(server.address() as AddressInfo).port}` };
  }

  /** Closes every server started so far (for afterEach). */
  async closeAll(): Promise<void> {
    for (const s of this.servers.splice(0)) {
      s.closeAllConnections();
      await new Promise((r) => s.close(r));
    }
  }
}
