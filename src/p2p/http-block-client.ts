import { Agent, request } from 'undici';
import { DfError } from '../errors.js';
import type { TokenBucket } from '../util/token-bucket.js';
import { deferredBySource, sourceUnavailable } from '../fetch/types.js';
import { CLUSTER_TOKEN_HEADER, PEER_ID_HEADER } from './auth.js';
import { clientTlsOptions, tlsFailure, type TlsMaterial } from './tls.js';

/**
 * A host that does not accept a connection within this time counts as down, not as slow (ms): generous,
 * since the answer to a SYN queues behind a saturated uplink like everything else.
 */
const CONNECT_TIMEOUT_MS = 10_000;

/**
 * One GET of a blob range from a peer or seed, with the cluster token and the host's download limit; over
 * HTTPS with this host's client certificate when p2p.tls is set.
 */
export class HttpBlockClient {
  private readonly agent: Agent;
  private readonly scheme: 'http' | 'https';

  constructor(
    private readonly clusterToken: string,
    private readonly download?: TokenBucket,
    /** This host's id in the P2P tier: a seed notes which node a range went to (tracker). */
    private readonly peerId = '',
    tls?: TlsMaterial,
  ) {
    this.scheme = tls ? 'https' : 'http';
    this.agent = new Agent({
      keepAliveTimeout: 30_000,
      connections: 16,
      connect: { timeout: CONNECT_TIMEOUT_MS, ...(tls && clientTlsOptions(tls)) },
      // the caller's signal bounds each request (its limit grows with the size)
      headersTimeout: 0,
      bodyTimeout: 0,
    });
  }

  async get(
    address: string,
    digest: string,
    offset: number,
    length: number,
    signal: AbortSignal,
    extra: Record<string, string> = {},
  ): Promise<Buffer> {
    await this.download?.take(length, signal);
    const q = new URLSearchParams({ offset: String(offset), length: String(length), ...extra });
    const url = `${this.scheme}://${address}/blobs/${digest}?${q}`;
    let res;
    try {
      res = await request(url, {
        method: 'GET',
        headers: {
          [CLUSTER_TOKEN_HEADER]: this.clusterToken,
          ...(this.peerId ? { [PEER_ID_HEADER]: this.peerId } : {}),
        },
        signal,
        dispatcher: this.agent,
      });
    } catch (err) {
      if (signal.aborted && signal.reason instanceof DfError) throw signal.reason;
      // no connection at all: the host is down or unreachable (not a slow transfer)
      if ((err as { code?: string }).code === 'UND_ERR_CONNECT_TIMEOUT')
        throw new DfError(
          'NETWORK',
          `GET ${address} ${digest}: no connection within ${CONNECT_TIMEOUT_MS} ms`,
        );
      if (this.scheme === 'https') {
        const e = tlsFailure(address, err);
        if (e) throw e;
      }
      throw DfError.from(err, `GET ${address} ${digest}`);
    }
    if (res.statusCode !== 200) {
      const text = (await res.body.text().catch(() => '')).slice(0, 200);
      const what = `${address}: ${digest} ${offset}+${length}: HTTP ${res.statusCode} ${text}`;
      if (res.statusCode === 404 || res.statusCode === 416) throw sourceUnavailable(what);
      if (res.statusCode === 409) throw deferredBySource(what);
      if (res.statusCode === 401) throw new DfError('UNAUTHORIZED', `${what} (check p2p.clusterToken)`);
      if (res.statusCode === 504) throw DfError.timeout(what);
      throw new DfError('NETWORK', what);
    }
    let body: Buffer;
    try {
      body = Buffer.from(await res.body.arrayBuffer());
    } catch (err) {
      // cut off mid-body by the caller's time limit: that limit's error, not undici's abort
      if (signal.aborted && signal.reason instanceof DfError) throw signal.reason;
      throw DfError.from(err, `GET ${address} ${digest}: body`);
    }
    if (body.length !== length)
      throw new DfError('NETWORK', `${address}: got ${body.length} of ${length} bytes`);
    return body;
  }

  async close(): Promise<void> {
    await this.agent.close().catch(() => undefined);
  }
}
