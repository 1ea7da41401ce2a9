import { DfError } from '../errors.js';
import { isBusy } from '../fetch/types.js';
import { sleep, type Timers } from '../util/timers.js';
import type { HttpBlockClient } from './http-block-client.js';
import type { Isolation } from './isolation.js';
import { rankSeeds } from './rendezvous.js';

/** A seed that answered a piece table request busy is asked again after this long, growing to the max (ms). */
const TABLE_BUSY_MS = 500;
const TABLE_BUSY_MAX_MS = 2000;

/** The seeds of a node, its client and its isolation of seeds: what a request to a seed itself needs. */
export interface SeedAccess {
  seeds: readonly string[];
  isolation: Isolation;
  http: HttpBlockClient;
  timers: Timers;
}

/**
 * The piece table of a raw file from the first seed (rendezvous over `key`: the file's digest, else its
 * URL) that answers; a seed that is down is isolated and the next one asked. A seed that answers busy
 * (fetching as many files as it may) is asked again after a pause, until `signal` ends: it is alive, and
 * the next seed (or the node itself) would fetch the file from its origin once more. Returns the seed
 * too: it holds the file, so its pieces are asked of it (seedFor).
 */
export async function seedFileTable(
  deps: SeedAccess,
  key: string,
  query: Record<string, string>,
  maxBytes: number,
  signal: AbortSignal,
  origin?: Readonly<Record<string, string>>,
): Promise<{ seed: string; table: Buffer }> {
  for (let attempt = 0; ; attempt++) {
    let last: unknown = new DfError('FAILED_PRECONDITION', 'no seed is configured (p2p.seeds)');
    let busy = false;
    for (const seed of rankSeeds(key, deps.seeds)) {
      if (deps.isolation.isolated(seed)) continue;
      try {
        return { seed, table: await deps.http.fileTable(seed, query, maxBytes, signal, origin) };
      } catch (err) {
        if (signal.aborted) throw err;
        const e = DfError.from(err);
        if (isBusy(e)) {
          busy = true;
          break;
        }
        // the seed answered: its answer stands (another seed has the same configuration and origin)
        if (e.code !== 'NETWORK' && e.code !== 'TIMEOUT') throw e;
        deps.isolation.fail(seed, `${e.code}: ${e.message.slice(0, 300)}`);
        last = e;
      }
    }
    if (!busy) throw last;
    await sleep(deps.timers, Math.min(TABLE_BUSY_MS * 2 ** Math.min(attempt, 3), TABLE_BUSY_MAX_MS), signal);
  }
}
