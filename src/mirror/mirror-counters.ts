/** What the mirror did, for metrics and tests. */
export interface MirrorCounters {
  requests: Record<string, number>;
  /** Bytes sent to engines, by kind (manifest, blob). */
  bytes: Record<string, number>;
  /** Manifests answered from memory, fresh or (registry down) stale. */
  manifestHits: number;
  staleManifests: number;
  digestMismatches: number;
  /** Blob answers by where the bytes came from: cache, cluster (pieces), registry (streamed). */
  blobSources: Record<string, number>;
  /** Blobs streamed from the registry because the cluster could not answer them (blobs configured). */
  clusterFallbacks: number;
  /** Access checks (blob HEADs with the engine's credentials) sent to the registry, and refused. */
  accessChecks: number;
  accessDenied: number;
  /** Blobs answered while the registry was unreachable, on a remembered positive answer. */
  outageAnswers: number;
  /** Manifests a seed answered (it had them from the registry with the engine's credentials). */
  seedManifests: number;
}
