/**
 * The slowest transfer rate a range request (to a peer, a seed or the registry) may sustain before it
 * counts as timed out (bytes/s). Fixed timeouts cut 4 MiB fill runs on thin or shared links (a 20 Mbit/s
 * seed link shared by several nodes), sending them elsewhere; the time limit therefore grows with the
 * request size.
 */
export const MIN_TRANSFER_BYTES_PER_SEC = 64 * 1024;

/** Time limit (ms) of one block request of `length` bytes: the configured base plus time at the floor rate. */
export function transferTimeoutMs(baseMs: number, length: number): number {
  return baseMs + Math.ceil((length / MIN_TRANSFER_BYTES_PER_SEC) * 1000);
}

/**
 * A background-fill request that keeps receiving bytes runs past its time limit, up to this many times it
 * (a seed's or a peer's uplink shared by many nodes is slow, not down; the bytes already received are not
 * thrown away). A read a container waits on keeps its fixed limit.
 */
export const SLOW_FILL_FACTOR = 4;
