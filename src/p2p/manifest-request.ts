// A seed's manifest relay on the P2P port (`GET /manifests/v2/<name>/manifests/<ref>?ns=<registry>`): what the
// block server and the node's client agree on. The answering side is src/mirror/seed-manifests.ts.

/** Path prefix of the relay: the rest is the engine's own pull path (`/v2/...?ns=REGISTRY`). */
export const MANIFEST_PATH_PREFIX = '/manifests/v2/';
/** On a 200: how long ago (ms) the registry answered this manifest to the seed. */
export const MANIFEST_AGE_HEADER = 'x-dfnode-age-ms';
/** On a 200: "1" when the seed could not reach the registry and answers a copy it kept. */
export const MANIFEST_STALE_HEADER = 'x-dfnode-stale';
/** On any other status: "registry" when it is the registry's own answer (401 with challenge, 404, ...). */
export const MANIFEST_FROM_HEADER = 'x-dfnode-from';

/** A seed's answer to a manifest request, as the block server writes it. */
export interface ManifestWireAnswer {
  status: number;
  headers: Record<string, string>;
  body: Buffer;
}

/**
 * Answers `GET /manifests/...`: `target` is the engine's pull path after the prefix's `/manifests`, with the
 * engine's Authorization and Accept headers.
 */
export type SeedManifests = (
  target: string,
  headers: { authorization?: string; accept?: string },
  signal: AbortSignal,
) => Promise<ManifestWireAnswer>;

/** A seed's manifest relay (src/mirror/seed-manifests.ts), started and closed with the seed. */
export interface SeedManifestProvider {
  answer: SeedManifests;
  init(): Promise<void>;
  close(): Promise<void>;
}
