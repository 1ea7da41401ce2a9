import { createHash } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { digestAlgorithm } from '../registry/digest.js';
import { credentialKey, type BlobAccess } from './blob-access.js';
import type { BlobHolder, ClusterBlob } from './cluster-blobs.js';
import type { MirrorCounters } from './mirror-counters.js';
import type { MirrorRoute } from './route.js';
import type { Upstream, UpstreamResponse } from './upstream.js';
import { UpstreamPieceSource } from './upstream-pieces.js';

/** Response headers of a blob relayed from the registry. */
const RELAYED = [
  'content-type',
  'content-length',
  'content-range',
  'docker-content-digest',
  'etag',
  'accept-ranges',
];

export interface MirrorBlobsOptions {
  upstream: Upstream;
  /** The node's cache and P2P tier; without it every blob is streamed from the registry. */
  cluster?: BlobHolder;
  access: BlobAccess;
  accessTtlMs: number;
  /** While the registry is unreachable, a remembered access this old still lets a blob through. */
  staleMs: number;
  pieceTimeoutMs: number;
  counters: MirrorCounters;
  log: Logger;
  now: () => number;
  /** Relays a registry answer (errors, challenges) as it is. */
  relay(up: UpstreamResponse, res: ServerResponse, method: string): Promise<void>;
  /** Counts bytes sent to engines. */
  sent(kind: string, n: number): void;
}

/**
 * The mirror's blob answers: from the node's cache or the cluster after an access check with the engine's
 * credentials, else streamed from the registry; whole blobs checked against their digest as they go.
 */
export class MirrorBlobs {
  constructor(private readonly opts: MirrorBlobsOptions) {}

  async serve(
    route: Extract<MirrorRoute, { kind: 'blob' }>,
    method: 'GET' | 'HEAD',
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const blobs = this.opts.cluster;
    // a HEAD is the registry's answer with the engine's credentials (it opens no fetch through the cluster)
    if (blobs && method === 'HEAD') return this.headOrHeld(blobs, route, req, res, signal);
    if (!blobs) return this.blobFromRegistry(route, method, req, res, signal);
    const up = await this.checkAccess(route, req, signal);
    if (up) return this.opts.relay(up, res, method);
    const { registry, repository } = route.ref;
    const auth = req.headers.authorization;
    const origin = new UpstreamPieceSource(
      this.opts.upstream,
      registry,
      repository,
      auth,
      this.opts.pieceTimeoutMs,
    );
    const got = await blobs.open({ registry, repository, digest: route.digest, origin }, signal);
    if (typeof got === 'string') {
      this.opts.counters.clusterFallbacks++;
      this.opts.log.debug({ digest: route.digest, reason: got }, 'mirror: blob streamed from the registry');
      return this.blobFromRegistry(route, method, req, res, signal);
    }
    try {
      await this.blobFromCluster(got, route, req, res, signal);
    } finally {
      got.release();
    }
  }

  /**
   * Checks that the engine's credentials may read the blob before anything is answered from the cluster
   * or the cache: a HEAD of the blob at the registry with the request's Authorization, unless the
   * registry said yes for this credential and repository within accessTtlMs and the digest is known to be
   * in it. Returns the registry's refusal (401/403/404...) to relay; undefined: allowed. While the
   * registry cannot be reached, only a remembered yes (within staleManifestMs) lets the blob through.
   */
  private async checkAccess(
    route: Extract<MirrorRoute, { kind: 'blob' }>,
    req: IncomingMessage,
    signal: AbortSignal,
  ): Promise<UpstreamResponse | undefined> {
    const cred = credentialKey(req.headers.authorization);
    const repo = `${route.ref.registry}/${route.ref.repository}`;
    const now = this.opts.now();
    if (this.opts.access.allowed(cred, repo, route.digest, this.opts.accessTtlMs, now)) return undefined;
    const headers: Record<string, string> = {};
    if (req.headers.authorization) headers.authorization = req.headers.authorization;
    let up: UpstreamResponse;
    try {
      this.opts.counters.accessChecks++;
      up = await this.opts.upstream.request(
        'HEAD',
        route.ref.registry,
        `/v2/${route.ref.repository}/blobs/${route.digest}`,
        headers,
        signal,
      );
    } catch (err) {
      if (signal.aborted || !this.opts.access.allowed(cred, repo, route.digest, this.opts.staleMs, now))
        throw err;
      this.opts.counters.outageAnswers++;
      this.opts.log.warn(
        { registry: route.ref.registry, digest: route.digest },
        'registry unreachable: answering a blob this credential was allowed recently',
      );
      return undefined;
    }
    if (up.status !== 200) {
      this.opts.counters.accessDenied++;
      return up;
    }
    up.body.on('error', () => undefined);
    up.body.destroy();
    this.opts.access.grant(cred, repo, now);
    this.opts.access.learn(repo, [route.digest]);
    return undefined;
  }

  /**
   * A blob HEAD: the registry's answer; while the registry cannot be reached, the size of a blob held here
   * (complete) to an engine allowed recently, on the rule of outage answers.
   */
  private async headOrHeld(
    blobs: BlobHolder,
    route: Extract<MirrorRoute, { kind: 'blob' }>,
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    try {
      return await this.blobFromRegistry(route, 'HEAD', req, res, signal);
    } catch (err) {
      const e = DfError.from(err);
      if (signal.aborted || res.headersSent || (e.code !== 'NETWORK' && e.code !== 'TIMEOUT')) throw err;
      const size = blobs.heldSize(route.digest);
      const cred = credentialKey(req.headers.authorization);
      const repo = `${route.ref.registry}/${route.ref.repository}`;
      const allowed = this.opts.access.allowed(cred, repo, route.digest, this.opts.staleMs, this.opts.now());
      if (size === undefined || !allowed) throw err;
      this.opts.counters.outageAnswers++;
      res.writeHead(200, {
        'Content-Type': 'application/octet-stream',
        'Content-Length': size,
        'Docker-Content-Digest': route.digest,
        'Accept-Ranges': 'bytes',
      });
      res.end();
    }
  }

  /** A blob GET from the node's cache or the cluster: whole (digest checked as it goes) or a range. */
  private async blobFromCluster(
    blob: ClusterBlob,
    route: Extract<MirrorRoute, { kind: 'blob' }>,
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const size = blob.size;
    const range = parseRange(req.headers.range, size);
    if (range === 'unsatisfiable') {
      res.writeHead(416, { 'Content-Range': `bytes */${size}`, 'Content-Length': 0 });
      res.end();
      return;
    }
    const [start, end] = range ?? [0, size];
    const headers: Record<string, string | number> = {
      'Content-Type': 'application/octet-stream',
      'Content-Length': end - start,
      'Docker-Content-Digest': route.digest,
      'Accept-Ranges': 'bytes',
    };
    if (range) headers['Content-Range'] = `bytes ${start}-${end - 1}/${size}`;
    res.writeHead(range ? 206 : 200, headers);
    this.opts.counters.blobSources[blob.source] = (this.opts.counters.blobSources[blob.source] ?? 0) + 1;
    await this.sendVerified(route, blob.read(start, end, signal), !range, res, () => undefined);
  }

  /** Today's path: the blob streamed from the registry with the engine's credentials. */
  private async blobFromRegistry(
    route: Extract<MirrorRoute, { kind: 'blob' }>,
    method: 'GET' | 'HEAD',
    req: IncomingMessage,
    res: ServerResponse,
    signal: AbortSignal,
  ): Promise<void> {
    const path = `/v2/${route.ref.repository}/blobs/${route.digest}`;
    const up = await this.opts.upstream.request(method, route.ref.registry, path, req.headers, signal);
    if (up.status !== 200 && up.status !== 206) return this.opts.relay(up, res, method);
    const headers: Record<string, string> = {};
    for (const h of RELAYED) {
      const v = up.headers[h];
      if (typeof v === 'string') headers[h] = v;
    }
    headers['docker-content-digest'] = route.digest;
    res.writeHead(up.status, headers);
    if (method === 'HEAD') {
      up.body.destroy();
      res.end();
      return;
    }
    this.opts.counters.blobSources.registry = (this.opts.counters.blobSources.registry ?? 0) + 1;
    await this.sendVerified(route, up.body as AsyncIterable<Buffer>, up.status === 200, res, () =>
      up.body.destroy(),
    );
  }

  /**
   * Sends a blob's bytes. A whole blob is checked against its digest as it passes, and its last chunk is
   * held back until the digest matches: a source that sends other bytes gets the engine's connection cut
   * before the end, never a clean end of a wrong blob.
   */
  private async sendVerified(
    route: Extract<MirrorRoute, { kind: 'blob' }>,
    body: AsyncIterable<Buffer>,
    whole: boolean,
    res: ServerResponse,
    stop: () => void,
  ): Promise<void> {
    const hash = whole ? createHash(digestAlgorithm(route.digest)) : undefined;
    let held: Buffer | undefined;
    const write = async (chunk: Buffer) => {
      this.opts.sent('blob', chunk.length);
      if (!res.write(chunk))
        await new Promise<void>((r) => {
          const done = () => {
            res.off('drain', done).off('close', done);
            r();
          };
          res.on('drain', done).on('close', done);
        });
    };
    for await (const chunk of body) {
      hash?.update(chunk);
      if (hash) {
        if (held) await write(held);
        held = chunk;
      } else await write(chunk);
      if (res.destroyed) {
        stop();
        return;
      }
    }
    if (hash) {
      const got = `${digestAlgorithm(route.digest)}:${hash.digest('hex')}`;
      if (got !== route.digest) {
        this.opts.counters.digestMismatches++;
        this.opts.log.warn(
          { registry: route.ref.registry, digest: route.digest, got },
          'a blob does not match its digest; connection cut',
        );
        res.destroy();
        return;
      }
      if (held) await write(held);
    }
    res.end();
  }
}

/**
 * A single byte range (`bytes=A-B`, `bytes=A-`, `bytes=-N`) as [start, end); undefined: the whole blob
 * (no Range header, or one this mirror does not narrow, such as several ranges).
 */
export function parseRange(
  header: string | undefined,
  size: number,
): [number, number] | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (!m[1] && !m[2])) return undefined;
  let start: number;
  let end: number;
  if (!m[1]) {
    start = Math.max(0, size - Number(m[2]));
    end = size;
  } else {
    start = Number(m[1]);
    end = m[2] ? Math.min(size, Number(m[2]) + 1) : size;
  }
  if (start >= size || end <= start) return 'unsatisfiable';
  return [start, end];
}
