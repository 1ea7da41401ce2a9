import { hash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { DfError } from '../errors.js';

/** The header (HTTP) and metadata key (gRPC) that carries the cluster token. */
export const CLUSTER_TOKEN_HEADER = 'x-dfnode-cluster-token';

/** The header naming the requesting node's P2P id (a seed tells the tracker where a range went). */
export const PEER_ID_HEADER = 'x-dfnode-peer-id';

/** The cluster token's digest, kept for the next call (every request and tracker call checks the token). */
let expectedDigest: { token: string; digest: Buffer } | undefined;

/**
 * Constant-time comparison of a presented token with the cluster token (both hashed first, so that the
 * time does not depend on lengths either). An empty expected token matches nothing.
 */
export function tokenMatches(expected: string, given: string | string[] | undefined): boolean {
  if (!expected || typeof given !== 'string') return false;
  if (expectedDigest?.token !== expected) {
    expectedDigest = { token: expected, digest: hash('sha256', expected, 'buffer') };
  }
  const b = hash('sha256', given, 'buffer'); // one call, no Hash object: every request checks it
  return timingSafeEqual(expectedDigest.digest, b);
}

/** The cluster token from the config: p2p.clusterToken, else the first line of p2p.clusterTokenFile. */
export function resolveClusterToken(p2p: { clusterToken: string; clusterTokenFile: string }): string {
  if (p2p.clusterToken) return p2p.clusterToken;
  if (!p2p.clusterTokenFile) return '';
  try {
    return readFileSync(p2p.clusterTokenFile, 'utf8').split('\n')[0]!.trim();
  } catch (err) {
    throw new DfError(
      'CONFIG',
      `cannot read p2p.clusterTokenFile ${p2p.clusterTokenFile}: ${(err as Error).message}`,
    );
  }
}
