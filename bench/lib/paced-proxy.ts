// A TCP proxy on loopback that forwards what a server sends at a fixed rate (shared by all its connections,
// like one host's uplink), in small slices every 2 ms: a client reads its responses in the small pieces a
// slow link delivers, without network namespaces or tc. Requests go through unpaced. Runs in the benchmark's
// own process (its CPU is not the measured processes').
import { createConnection, createServer, type Server, type Socket } from 'node:net';

const TICK_MS = 2;
const HIGH_WATER = 1024 * 1024;

interface Flow {
  client: Socket;
  upstream: Socket;
  queue: Buffer[];
  queued: number;
}

export class PacedProxy {
  private readonly flows = new Set<Flow>();
  private readonly timer: NodeJS.Timeout;
  private last = performance.now();

  private constructor(
    private readonly server: Server,
    readonly port: number,
    private readonly bytesPerSecond: number,
  ) {
    this.timer = setInterval(() => this.tick(), TICK_MS);
  }

  /**
   * Listens on 127.0.0.1:`port` (0: any) and forwards to 127.0.0.1:`target`; responses at `bytesPerSecond`
   * (0: unpaced).
   */
  static async start(port: number, target: number, bytesPerSecond: number): Promise<PacedProxy> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    const p = new PacedProxy(server, (server.address() as { port: number }).port, bytesPerSecond);
    server.on('connection', (client) => p.accept(client, target));
    return p;
  }

  private accept(client: Socket, target: number): void {
    const upstream = createConnection(target, '127.0.0.1');
    client.setNoDelay(true);
    const flow: Flow = { client, upstream, queue: [], queued: 0 };
    const end = () => {
      this.flows.delete(flow);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', () => (flow.queued ? undefined : end()));
    client.pipe(upstream);
    if (!this.bytesPerSecond) return void upstream.pipe(client);
    this.flows.add(flow);
    upstream.on('data', (b: Buffer) => {
      flow.queue.push(b);
      flow.queued += b.length;
      if (flow.queued > HIGH_WATER) upstream.pause();
    });
  }

  /** Sends each flow with bytes queued its share of the rate since the last tick. */
  private tick(): void {
    const now = performance.now();
    const budget = Math.min((this.bytesPerSecond * (now - this.last)) / 1000, this.bytesPerSecond / 20);
    this.last = now;
    const busy = [...this.flows].filter((f) => f.queued > 0);
    if (!busy.length) return;
    const share = Math.max(1, Math.floor(budget / busy.length));
    for (const f of busy) {
      let left = share;
      while (left > 0 && f.queue.length) {
        const b = f.queue[0]!;
        const n = Math.min(left, b.length);
        f.client.write(b.subarray(0, n));
        if (n === b.length) f.queue.shift();
        else f.queue[0] = b.subarray(n);
        f.queued -= n;
        left -= n;
      }
      if (f.queued < HIGH_WATER / 4) f.upstream.resume();
      if (!f.queued && f.upstream.destroyed) f.client.end();
    }
  }

  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const f of this.flows) f.client.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}
