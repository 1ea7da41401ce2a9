import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { DfError } from '../errors.js';

/** The node's Prometheus metrics. Components report through these methods; nothing here is per-block logging. */
export class NodeMetrics {
  readonly registry = new Registry();
  readonly bytes = new Counter({
    name: 'dfnode_bytes_total',
    help: 'Stored block bytes served to reads and fill, by source (memory, cache, peer, seed, registry)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly fetches = new Counter({
    name: 'dfnode_fetch_requests_total',
    help: 'Range requests sent to remote sources, by source',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly fetchLatency = new Histogram({
    name: 'dfnode_block_fetch_seconds',
    help: 'Latency of remote block fetches (one range request), by source',
    labelNames: ['source'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  readonly blockedSeconds = new Counter({
    name: 'dfnode_read_blocked_seconds_total',
    help: 'Time container reads spent waiting for block fetches',
    registers: [this.registry],
  });
  readonly verifyFailures = new Counter({
    name: 'dfnode_verification_failures_total',
    help: 'Blocks that failed SHA-256 verification, by source',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly readErrors = new Counter({
    name: 'dfnode_read_errors_total',
    help: 'File reads answered with an error (EIO, ENOSPC, ...), by errno',
    labelNames: ['errno'] as const,
    registers: [this.registry],
  });
  readonly fillRatio = new Gauge({
    name: 'dfnode_cache_fill_ratio',
    help: 'Fraction of each mounted blob present in the local cache',
    labelNames: ['blob'] as const,
    registers: [this.registry],
  });
  readonly cacheBytes = new Gauge({
    name: 'dfnode_cache_bytes',
    help: 'Bytes held in the local block cache',
    registers: [this.registry],
  });
  readonly mounts = new Gauge({
    name: 'dfnode_mounts',
    help: 'Layer filesystems currently mounted',
    registers: [this.registry],
  });

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics !== false)
      collectDefaultMetrics({ register: this.registry, prefix: 'dfnode_process_' });
  }

  async text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Serves GET /metrics on `address` (host:port). */
  async serve(address: string): Promise<Server> {
    const i = address.lastIndexOf(':');
    const host = address.slice(0, i) || '127.0.0.1';
    const port = Number(address.slice(i + 1));
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new DfError('CONFIG', `metrics address ${address} is not host:port`);
    const server = createServer((req, res) => {
      if (req.method === 'GET' && (req.url === '/metrics' || req.url === '/')) {
        this.text().then(
          (body) => {
            res.writeHead(200, { 'content-type': this.registry.contentType });
            res.end(body);
          },
          (err) => {
            res.writeHead(500);
            res.end(String(err));
          },
        );
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(
          (err as NodeJS.ErrnoException).code === 'EADDRINUSE'
            ? new DfError(
                'CONFIG',
                `metrics address ${address} is in use; set node.metricsAddress (or --metrics-address)`,
              )
            : DfError.from(err, `metrics server on ${address}`),
        ),
      );
      server.listen(port, host.replace(/^\[|\]$/g, ''), () => resolve());
    });
    return server;
  }
}
