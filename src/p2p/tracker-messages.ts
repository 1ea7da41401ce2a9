// The tracker's messages as the seed's TrackerState takes and answers them (tracker.proto, both transports).

export interface AnnounceMsg {
  blob: string;
  units: number;
  peer_id: string;
  address: string;
  zone: string;
  load: number;
  full: boolean;
  bitmap: Uint8Array;
  added: number[];
  leave: boolean;
  failed_peers: string[];
  /** Also a lookup of these units (tracker.proto): answered in AnnounceAnswer.lookup when max_peers > 0. */
  lookup_want?: Uint8Array;
  lookup_max_peers?: number;
}

/** A tracker's answer to an announce; `lookup` when the announce asked for one (and the tracker knows how). */
export interface AnnounceAnswer {
  need_full: boolean;
  interval_ms: number;
  lookup?: LookupAnswer | null;
}

export interface LookupMsg {
  blob: string;
  peer_id: string;
  zone: string;
  want: number[];
  max_peers: number;
  /** Units wanted as a bitmap of the blob's units (replaces `want` when not empty). */
  want_bitmap?: Uint8Array;
}

export interface HolderMsg {
  peer_id: string;
  address: string;
  zone: string;
  load: number;
  bitmap: Buffer;
  failures: number;
  /** Units the seed is sending the holder (see Holder.pending in tracker.proto); empty when none. */
  pending: Buffer;
}

export interface LookupAnswer {
  holders: HolderMsg[];
  units: number;
  /** Units the seed holds (empty: it does not serve the blob, or holds nothing yet). */
  seed_bitmap: Buffer;
  /** Peers of the swarm besides the asker. */
  peers: number;
}
