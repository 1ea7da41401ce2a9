import { deferredBySource, handedBackBySource } from '../fetch/types.js';
import type { BlobHint, ServedBlob } from './block-server.js';
import type { TrackerState } from './tracker-state.js';
import type { Units } from './unit-layout.js';

/** Units a deferral names at most (what the seed is sending other nodes; unit-ranges.ts cuts the header). */
const AWAY_MAX = 4096;

/**
 * The tracker learns that `units` are on their way to the requesting node (and tells the other nodes); a
 * planned request for units already on their way to another node (with `heldToo`, or held by one) is
 * deferred (DEFERRED): the node takes them from that node instead, so that the seed sends each unit about
 * once.
 */
export function claimUnits(
  tracker: TrackerState,
  digest: string,
  h: BlobHint | undefined,
  units: number[],
  what: string,
  heldToo = false,
  handBack?: (peer: string, units: readonly number[]) => boolean,
): void {
  const peer = h?.peer;
  if (!peer) return;
  const elsewhere = heldToo
    ? tracker.elsewhere(digest, peer, units)
    : tracker.pendingAtOthers(digest, peer, units);
  if (h.defer && elsewhere)
    throw deferredBySource(
      `${what} is on its way to (or at) another node`,
      tracker.pendingAtOthersList(digest, peer, AWAY_MAX),
    );
  // the seed's registry link is full: the node fetches the run from the registry (claimed for it)
  if (h.defer && h.origin && handBack?.(peer, units)) {
    h.handedBack = true;
    throw handedBackBySource(
      `${what}: handed back (the seed's registry link is full); fetch it from the registry`,
    );
  }
  tracker.assume(digest, peer, units);
}

/**
 * A seed's raw file (src/mirror/seed-files.ts) with its pieces claimed like a DFB layer's blocks before they
 * are read; a planned request is also deferred for a piece another node holds: nodes fetch a raw file in
 * file order, and take a piece another node just got from that node (after a lookup) rather than from the
 * seed again.
 */
export function trackedFile(
  tracker: TrackerState,
  digest: string,
  file: ServedBlob & { readonly layout: Units },
  uploadSlots?: number,
): ServedBlob {
  const claim = (offset: number, length: number, h: BlobHint | undefined) => {
    const r = file.layout.unitsFor(offset, length);
    if (!r) return;
    const units: number[] = [];
    for (let u = r[0]; u <= r[1]; u++) units.push(u);
    claimUnits(tracker, digest, h, units, `${digest} ${offset}+${length}`, true);
  };
  return {
    size: file.size,
    ...(uploadSlots ? { uploadSlots } : {}),
    // claimed when the request comes (before it waits for the origin: other nodes are deferred meanwhile)
    // and again when it is read (the same node: no change)
    ...(file.ready
      ? {
          ready: (offset: number, length: number, sig: AbortSignal, h?: BlobHint) => {
            claim(offset, length, h);
            return file.ready!(offset, length, sig, h);
          },
        }
      : {}),
    read: async (offset, length, sig, h) => {
      claim(offset, length, h);
      return file.read(offset, length, sig, h);
    },
    pieceDigest: file.pieceDigest && ((offset, length) => file.pieceDigest!(offset, length)),
    ...deliveryReports(tracker, digest, file.layout),
  };
}

/**
 * A served blob's reports of whether an answer reached its node, for the tracker: units an undelivered
 * answer carried are no longer on their way to that node; a delivered answer's stay pending there for the
 * pending TTL from now.
 */
export function deliveryReports(
  tracker: TrackerState,
  digest: string,
  layout: Units,
): Pick<ServedBlob, 'undelivered' | 'delivered'> {
  return {
    undelivered: (offset, length, peer) => {
      const r = layout.unitsFor(offset, length);
      if (r) tracker.unassume(digest, peer, r[0], r[1]);
    },
    delivered: (offset, length, peer) => {
      const r = layout.unitsFor(offset, length);
      if (r) tracker.delivered(digest, peer, r[0], r[1]);
    },
  };
}
