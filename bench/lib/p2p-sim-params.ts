/** What the P2P simulation (bench/lib/p2p-sim.ts) is given and what it reports. */
import { MID_RUN_WRITE_BYTES } from '../../src/fetch/run-writer.js';
import { ANNOUNCE_DELAY_MS, LOOKUP_GAP_MS } from '../../src/p2p/node-cadence.js';
import { DEFAULT_TRACKER_LIMITS } from '../../src/p2p/tracker-limits.js';
import { SLOT_WAIT_MS, SLOT_WAITERS } from '../../src/p2p/upload-slots.js';

export interface SimParams {
  hosts: number;
  /** Stored bytes of the layer's blocks (the TOC unit comes on top). */
  blobBytes: number;
  unitBytes: number;
  /** Each node's link, up and down (Mbit/s); the seed's; the registry's. */
  nodeMbit: number;
  seedMbit: number;
  registryMbit: number;
  /** Round trip of a request before its first byte (ms). */
  rttMs: number;
  /** p2p.peerTimeoutMs: a peer request is abandoned after this plus its size at 64 KiB/s (as the node does). */
  peerTimeoutMs: number;
  /** Peer uploads a node serves at once; more are refused at once as busy (0: no limit). */
  uploadSlots: number;
  /**
   * A holder's upload slot is free once this many bytes of its run are left to send (0: at the flow's end).
   * The block server holds a slot until its socket's send queue is down to 64 KiB (src/util/send-queue.ts).
   * Before late on 2026-12-06 it freed the slot when the kernel took the last write: measured in bench/p2p
   * (`ss -tm` of the block servers' connections at N = 4), a sending connection then held 150 KB queued at
   * the median, 300 KB at the 75th percentile, up to 1 MB (`--send-buffer-kib 256` models that).
   */
  sendBufferBytes: number;
  /**
   * A run that finds the holder's slots taken waits this long for one (ms; SLOT_WAIT_MS), in arrival order;
   * then it is refused as busy. 0: refused at once (the block server before 2026-12-07, late).
   */
  slotWaitMs: number;
  /** Runs that may wait for one holder's slot at once (SLOT_WAITERS); more are refused at once. */
  slotWaiters: number;
  /** A holder that refused as busy is not asked again for this long (ms). */
  busyBackoffMs: number;
  /** A worker whose run was refused as busy plans again after this long (ms; p2pFill BUSY_RETRY_MS). */
  busyRetryMs: number;
  /**
   * A run's arrived units are stored (and announced) once this many bytes of them are pending, as RunWriter
   * does (MID_RUN_WRITE_BYTES); 0: only at the run's end.
   */
  midRunBytes: number;
  /** New units are announced this long after they arrive (with those that follow; ANNOUNCE_DELAY_MS). */
  announceDelayMs: number;
  /** A node asks the tracker for holders at most this often per blob (LOOKUP_GAP_MS). */
  lookupGapMs: number;
  /** Fill runs in flight per node (p2pFill concurrency). */
  concurrency: number;
  maxRunBytes: number;
  /** Hosts share one machine with this many cores (0: every host has its own CPU, never the limit). */
  machineCores: number;
  /** CPU seconds per GiB a node spends receiving, and a sender (node or seed) spends sending. */
  cpuRecvSecPerGiB: number;
  cpuSendSecPerGiB: number;
  /** Hosts start within this window (ms), uniformly. */
  startSpreadMs: number;
  /** The tracker's peers-per-blob bound (its default is DEFAULT_TRACKER_LIMITS.maxPeersPerBlob). */
  maxPeersPerBlob: number;
  /** Holders a tracker lookup scores (TrackerLimits.lookupCandidates). */
  lookupCandidates: number;
  rngSeed: number;
  /** Give up after this much virtual time (ms). */
  limitMs: number;
  /** Flow rates are recomputed (and transfers end) every this many ms. */
  stepMs: number;
}

export const DEFAULT_SIM: SimParams = {
  hosts: 4,
  blobBytes: 64 << 20,
  unitBytes: 64 << 10,
  nodeMbit: 20,
  seedMbit: 20,
  registryMbit: 40,
  rttMs: 2,
  peerTimeoutMs: 2000,
  // as the node's defaults: p2p.uploadSlots, SLOT_WAIT_MS, BUSY_BACKOFF_MS
  uploadSlots: 4,
  slotWaitMs: SLOT_WAIT_MS,
  slotWaiters: SLOT_WAITERS,
  sendBufferBytes: 64 << 10,
  busyBackoffMs: 500,
  busyRetryMs: 50,
  midRunBytes: MID_RUN_WRITE_BYTES,
  announceDelayMs: ANNOUNCE_DELAY_MS,
  lookupGapMs: LOOKUP_GAP_MS,
  concurrency: 6,
  maxRunBytes: 4 << 20,
  machineCores: 0,
  cpuRecvSecPerGiB: 0,
  cpuSendSecPerGiB: 0,
  startSpreadMs: 0,
  maxPeersPerBlob: DEFAULT_TRACKER_LIMITS.maxPeersPerBlob,
  lookupCandidates: DEFAULT_TRACKER_LIMITS.lookupCandidates,
  rngSeed: 1,
  limitMs: 3_600_000,
  stepMs: 50,
};

export interface SimResult {
  params: SimParams;
  /** Fill time of each node that finished (s), from its start. */
  times: number[];
  finished: number;
  meanS: number;
  maxS: number;
  /** Registry bytes sent / blob size. */
  registryEgress: number;
  /** Share of the nodes' received bytes by source. */
  fromPeers: number;
  fromSeed: number;
  seedUploadBytes: number;
  announces: number;
  lookups: number;
  /** Tracker calls: announces, some carrying a lookup (P2pNode sends its lookups with announces). */
  calls: number;
  /** Announces the tracker refused (its bounds: a swarm larger than maxPeersPerBlob). */
  refusedAnnounces: number;
  /** Peer requests abandoned at their timeout (the holder is then isolated for a while). */
  peerTimeouts: number;
  /** Peer fill runs refused because the holder's upload slots were taken (at once, or after a wait). */
  busyRefusals: number;
  /** Peer fill runs that waited for a holder's upload slot (then served, or refused). */
  slotWaits: number;
  /** Fill runs completed from peers and from the seed (requests that moved data). */
  peerRuns: number;
  seedRuns: number;
  /** The most runs one node was sending at once (its slots, plus runs whose rest sat in its send buffer). */
  peakNodeUploads: number;
  /** Wall time of the real tracker code per call (µs, mean) and the bitmap bytes it held at the peak. */
  announceUs: number;
  lookupUs: number;
  trackerBitmapBytes: number;
  /** Wall time of the real planner per plan (µs, mean) and plans made. */
  planUs: number;
  plans: number;
  events: number;
  wallMs: number;
}
