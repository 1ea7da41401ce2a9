// How often a node talks to a blob's tracker: kept apart from P2pNode so that the swarm simulation
// (bench/lib/p2p-sim-params.ts) follows the node without loading the node's module graph.

/** Delay of an announce of new units (they are announced together with those that follow quickly). */
export const ANNOUNCE_DELAY_MS = 100;
/** A blob's holders are asked of the tracker at most this often (ms). */
export const LOOKUP_GAP_MS = 250;
/** Holders a lookup asks for. */
export const LOOKUP_MAX_PEERS = 32;
