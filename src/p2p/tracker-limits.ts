import { DfError } from '../errors.js';
import type { Timers } from '../util/timers.js';

/**
 * What the tracker accepts from a cluster member (who may lie, send garbage or flood): every field is
 * checked before anything is allocated from it, and every table has a bound.
 */
export interface TrackerLimits {
  /** Units of a blob the seed does not hold (2^22: a 256 GiB blob of 64 KiB blocks; 512 KiB bitmaps). */
  maxUnits: number;
  /** Blobs tracked at once. */
  maxBlobs: number;
  /** Peers per blob. */
  maxPeersPerBlob: number;
  /** (peer, blob) entries over all blobs: with maxPeerIds, what bounds the tracker's memory per entry. */
  maxPeerEntries: number;
  /** Bytes of peer bitmaps held in all (the tracker's memory is about this). */
  maxBitmapBytes: number;
  /** Peer ids bound to an address at once. */
  maxPeerIds: number;
  /** Entries of the failure table (the oldest report is forgotten first). */
  maxFailureEntries: number;
  /** failed_peers of one announce that count (the rest are ignored). */
  maxFailedPerAnnounce: number;
  /** Units of one lookup's `want`. */
  maxWant: number;
  /** Holders one lookup answers. */
  maxHolders: number;
  /**
   * Holders with wanted units a lookup scores (of the asker's zone, when it names one), taken from a random
   * place in the swarm; it answers the best of them. Its cost stays flat as a swarm grows past this, and
   * askers get different holders instead of all the same "best" ones. Smaller swarms are scanned whole.
   */
  lookupCandidates: number;
  /** Bytes of bitmaps in one lookup answer (holders are cut to fit). */
  maxAnswerBitmapBytes: number;
}

export const DEFAULT_TRACKER_LIMITS: TrackerLimits = {
  maxUnits: 2 ** 22,
  maxBlobs: 4096,
  maxPeersPerBlob: 16_384,
  maxPeerEntries: 262_144,
  maxBitmapBytes: 256 * 1024 * 1024,
  maxPeerIds: 65_536,
  maxFailureEntries: 4096,
  maxFailedPerAnnounce: 64,
  maxWant: 4096,
  maxHolders: 64,
  lookupCandidates: 64,
  maxAnswerBitmapBytes: 4 * 1024 * 1024,
};

const BLOB = /^sha256:[0-9a-f]{64}$/;
/** Node ids are 16 hex digits (P2pNode.id); any short token of these characters is accepted. */
const PEER_ID = /^[A-Za-z0-9._:-]{1,128}$/;
/** host:port, host a name, an IPv4 address or a bracketed IPv6 address. */
const ADDRESS = /^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._-]{1,253}):(\d{1,5})$/;
/** p2p.zone is any label: at most 128 characters, no control characters. */
const ZONE = /^[^\x00-\x1f\x7f]{0,128}$/u;

function invalid(what: string): DfError {
  return DfError.invalidArgument(`tracker: ${what}`);
}

export function checkBlob(blob: unknown): string {
  if (typeof blob !== 'string' || !BLOB.test(blob)) throw invalid('blob must be sha256:<64 hex digits>');
  return blob;
}

export function checkPeerId(id: unknown, field = 'peer_id'): string {
  if (typeof id !== 'string' || !PEER_ID.test(id))
    throw invalid(`${field} must be 1 to 128 characters of A-Z a-z 0-9 . _ : -`);
  return id;
}

export function isPeerId(id: unknown): id is string {
  return typeof id === 'string' && PEER_ID.test(id);
}

export function checkAddress(address: unknown): string {
  const m = typeof address === 'string' ? ADDRESS.exec(address) : null;
  const port = m ? Number(m[1]) : 0;
  if (!m || port < 1 || port > 65535) throw invalid('address must be host:port of the block server');
  return address as string;
}

export function checkZone(zone: unknown): string {
  if (zone === undefined || zone === null) return '';
  if (typeof zone !== 'string' || !ZONE.test(zone))
    throw invalid('zone must be at most 128 characters without control characters');
  return zone;
}

/** A load that is not a uint32 counts as 0. */
export function loadOf(load: unknown): number {
  return typeof load === 'number' && Number.isInteger(load) && load >= 0 && load <= 0xffff_ffff ? load : 0;
}

/**
 * The unit count of an announce: an integer in 1..maxUnits, and when the seed holds the blob, one whose
 * bitmap has the size of the seed's (`seedBytes`, the length of the seed's bitmap).
 */
export function checkUnits(units: unknown, maxUnits: number, seedBytes: number | undefined): number {
  if (typeof units !== 'number' || !Number.isInteger(units) || units < 1 || units > maxUnits)
    throw invalid(`units must be an integer from 1 to ${maxUnits}`);
  if (seedBytes && Math.ceil(units / 8) !== seedBytes)
    throw invalid(
      `units ${units} do not match the seed's copy of the blob (${seedBytes * 8 - 7} to ${seedBytes * 8})`,
    );
  return units;
}

/** A full announce's bitmap: ceil(units/8) bytes, or empty (nothing held). */
export function checkBitmap(bitmap: unknown, units: number): Uint8Array {
  if (bitmap === undefined || bitmap === null) return new Uint8Array(0);
  if (!(bitmap instanceof Uint8Array) || (bitmap.length !== 0 && bitmap.length !== Math.ceil(units / 8)))
    throw invalid(`a bitmap of ${units} units has ${Math.ceil(units / 8)} bytes`);
  return bitmap;
}

/** Units of `added` (or `want`) inside 0..units-1; more than `max` entries is refused. */
export function unitList(list: unknown, units: number, max: number, field: string): number[] {
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list)) throw invalid(`${field} must be a list of units`);
  if (list.length > max) throw invalid(`${field} has ${list.length} units, more than ${max}`);
  return (list as unknown[]).filter(
    (u): u is number => typeof u === 'number' && Number.isInteger(u) && u >= 0 && u < units,
  );
}

/** A table of the tracker is full (after dropping what expired): the announce is refused, not stored. */
export function full(what: string): DfError {
  return new DfError('NO_SPACE', `tracker full: ${what}; retry later (peers that fell silent are forgotten)`);
}

/** TrackerState's settings (src/p2p/tracker-state.ts). */
export interface TrackerStateOptions {
  /** A peer that has not announced for this long is forgotten (ms). Default 30 s. */
  peerTtlMs?: number;
  /** Interval peers are told to announce at (ms). Default 5 s. */
  announceIntervalMs?: number;
  /** Reported failures halve every this many ms. Default 60 s. */
  failureHalfLifeMs?: number;
  /**
   * A unit the seed is sending a peer counts as that peer's to share while the response is on its way,
   * however long that takes (a seed shared by hundreds of nodes sends each run slowly), and for this long
   * after it reached the peer (ms; default 15 s): other peers are told it is on its way (until announced),
   * and the seed defers their planned requests for it.
   */
  pendingTtlMs?: number;
  /**
   * ...and only while that peer keeps announcing: silent this long (ms), it is taken for dead (killed after
   * the seed's response left, before it announced the units). Default three of the heartbeats nodes send
   * every fifth announce interval (at most peerTtlMs).
   */
  pendingSilenceMs?: number;
  /** The seed's own bitmap of a blob (a seed runs the tracker of the blobs it serves). */
  seedBits?: (blob: string) => Uint8Array | undefined;
  /** Bounds of what peers may make the tracker hold (DEFAULT_TRACKER_LIMITS). */
  limits?: Partial<TrackerLimits>;
  timers?: Timers;
  /** Random numbers in [0, 1) for the lookup's sampling and tie-breaks (default Math.random; the simulation seeds it). */
  random?: () => number;
}
