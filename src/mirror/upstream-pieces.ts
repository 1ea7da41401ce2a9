import { DfError } from '../errors.js';
import type { BlobRef, BlockSource } from '../fetch/types.js';
import { readExactly } from '../util/read-into.js';
import { childSignal, realTimers } from '../util/timers.js';
import { transferTimeoutMs } from '../util/transfer-timeout.js';
import { discard } from './origin.js';
import type { Upstream } from './upstream.js';

/**
 * The registry as the last source of the mirror's piece chain: range GETs of the blob with the engine's
 * own Authorization (the engine that asked was checked to have access), never the node's credentials.
 */
export class UpstreamPieceSource implements BlockSource {
  readonly kind = 'registry' as const;
  readonly name: string;

  constructor(
    private readonly upstream: Upstream,
    private readonly registry: string,
    private readonly repository: string,
    private readonly authorization: string | undefined,
    private readonly timeoutMs: number,
  ) {
    this.name = `registry ${registry}`;
  }

  async fetch(blob: BlobRef, offset: number, length: number, signal: AbortSignal): Promise<Buffer> {
    const what = `registry ${this.registry}: ${blob.digest} ${offset}+${length}`;
    const rq = childSignal(signal, transferTimeoutMs(this.timeoutMs, length), realTimers, what);
    try {
      const headers: Record<string, string> = { range: `bytes=${offset}-${offset + length - 1}` };
      if (this.authorization) headers.authorization = this.authorization;
      const up = await this.upstream.request(
        'GET',
        this.registry,
        `/v2/${this.repository}/blobs/${blob.digest}`,
        headers,
        rq.signal,
      );
      const cr = String(up.headers['content-range'] ?? '');
      const whole = up.status === 200 && offset === 0 && length === blob.size;
      if (!whole && (up.status !== 206 || !cr.startsWith(`bytes ${offset}-${offset + length - 1}/`))) {
        discard(up.body);
        throw new DfError('REGISTRY', `${what}: answered HTTP ${up.status} to a range request`);
      }
      return await readExactly(up.body, length, what);
    } catch (err) {
      if (rq.signal.aborted && rq.signal.reason instanceof DfError) throw rq.signal.reason;
      throw err;
    } finally {
      rq.dispose();
    }
  }
}
