// A node's P2P counters (metrics: NodeMetrics.publishP2p) and the label of an isolation reason.
import type { RegistryFetchReason } from './registry-fallback.js';

export interface P2pCounters {
  peersIsolated: number;
  /** Isolations by reason: timeout, bad_block, error. */
  peersIsolatedBy: Record<string, number>;
  /** Fill runs that timed out while the peer's bytes kept coming (sent elsewhere, peer not isolated). */
  peersSlow: number;
  seedsDown: number;
  /** Tracker lookups answered (holders or empty) and failed. */
  trackerAnswers: number;
  trackerEmpty: number;
  trackerErrors: number;
  /** Range requests sent to the registry, by why the P2P tier did not serve them. */
  registryFetches: Partial<Record<RegistryFetchReason, number>>;
}

/** Label of an isolation reason (an error code, or 'bad block'). */
export function isolationReason(reason: string): string {
  if (reason === 'bad block') return 'bad_block';
  if (reason === 'TIMEOUT') return 'timeout';
  return 'error';
}
