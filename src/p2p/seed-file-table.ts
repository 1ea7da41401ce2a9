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
 * `ask` of the first seed by rendezvous over `key` that is not isolated and can be asked: a seed whose
 * request fails with an error `down` says is isolated and the next one asked; any other failure is that
 * seed's answer and thrown. Throws the last failure when none could be asked (none configured, all down or
 * isolated). Returns the seed too.
 */
export async function askSeeds<T>(
  deps: SeedAccess,
  key: string,
  signal: AbortSignal,
  ask: (seed: string) => Promise<T>,
  down: (e: DfError) => boolean,
): Promise<{ seed: string; value: T }> {
  let last: unknown = new DfError('FAILED_PRECONDITION', 'no seed is configured (p2p.seeds)');
  for (const seed of rankSeeds(key, deps.seeds)) {
    if (deps.isolation.isolated(seed)) continue;
    try {
      return { seed, value: await ask(seed) };
    } catch (err) {
      if (signal.aborted) throw err;
      const e = DfError.from(err);
      if (!down(e)) throw e;
      deps.isolation.fail(seed, `${e.code}: ${e.message.slice(0, 300)}`);
      last = e;
    }
  }
  throw last;
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
    try {
      const { seed, value } = await askSeeds(
        deps,
        key,
        signal,
        (seed) => deps.http.fileTable(seed, query, maxBytes, signal, origin),
        // another answer stands (another seed has the same configuration and origin); busy: asked again
        (e) => e.code === 'NETWORK' || e.code === 'TIMEOUT',
      );
      return { seed, table: value };
    } catch (err) {
      if (signal.aborted || !isBusy(err)) throw err;
    }
    await sleep(deps.timers, Math.min(TABLE_BUSY_MS * 2 ** Math.min(attempt, 3), TABLE_BUSY_MAX_MS), signal);
  }
}
