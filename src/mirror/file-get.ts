import { createHash } from 'node:crypto';
import { copyFile, open, rename, rm, stat } from 'node:fs/promises';
import { CacheManager } from '../cache/cache-manager.js';
import type { Config } from '../config.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { resolveClusterToken } from '../p2p/auth.js';
import { P2pNode } from '../p2p/p2p-node.js';
import { childSignal, realTimers } from '../util/timers.js';
import type { FileSource } from './file-source.js';
import type { BytesBySource } from './piece-fetcher.js';
import { fetchThroughSwarm } from './piece-runs.js';
import { decodeTable, MAX_TABLE_BYTES, PieceLayout, tableDigest } from './piece-table.js';

/** How long a node waits for a seed's piece table (the seed may first fetch the whole file). */
const TABLE_TIMEOUT_MS = 60 * 60 * 1000;

export interface GetFileOptions {
  /** What to fetch: an http(s) URL (with `headers`) or a registry blob (file-source.ts). */
  source: FileSource;
  /** Where the file goes: written to OUT.dfnode-tmp, renamed when complete and verified. */
  out: string;
  config: Config;
  signal: AbortSignal;
  logger?: Logger;
  /**
   * A running node's P2P tier and cache (the daemon, the registry mirror): used as they are, neither
   * started nor closed here (one getFile per digest at a time: a blob joins the swarm once). Without it,
   * getFile starts its own (the `dfnode get` process).
   */
  cluster?: { p2p: P2pNode; caches: CacheManager };
  /** The file's size once known, then bytes as they arrive (progress). */
  onStart?: (size: number, already: number) => void;
  onBytes?: (n: number) => void;
}

export interface GetFileResult {
  digest: string;
  size: number;
  /** 'p2p': pieces through peers → seed → origin; 'direct': the whole file from the origin. */
  mode: 'p2p' | 'direct';
  /** Why the file came directly from the origin (no seed, seed refused, ...). */
  reason?: string;
  bytes: BytesBySource;
  /** sha256 of the piece table the seed gave (p2p). */
  table?: string;
}

/**
 * `dfnode get`: a file of any kind from an HTTP(S) origin through the cluster. The file's seed
 * (rendezvous over its digest, else its URL) fetches it from the origin once and answers its piece table;
 * this node then moves the pieces from peers, the seed, or the origin (with the user's headers), each
 * verified, into its cache (a crash keeps what was verified; a rerun fetches only the rest), announces
 * them to the file's tracker and serves them to peers while it runs, verifies the whole file against its
 * digest and writes OUT. Without a seed (none configured, or it cannot fetch this origin) the file comes
 * directly from the origin, resumable too.
 */
export async function getFile(opts: GetFileOptions): Promise<GetFileResult> {
  const cfg = opts.config;
  if (!cfg.p2p.seeds.length) return direct(opts, 'no seed is configured (p2p.seeds)');
  if (!resolveClusterToken(cfg.p2p)) return direct(opts, 'no cluster token (p2p.clusterToken)');
  const fallback = await throughCluster(opts);
  return typeof fallback === 'string' ? direct(opts, fallback) : fallback;
}

/** The P2P path; a string when the file must come directly from the origin instead (why). */
async function throughCluster(opts: GetFileOptions): Promise<GetFileResult | string> {
  const src = opts.source;
  const cfg = opts.config;
  const log = opts.logger ?? silentLogger;
  const own = !opts.cluster;
  const p2p = opts.cluster?.p2p ?? new P2pNode({ config: cfg, logger: log.child({ component: 'p2p' }) });
  const caches = opts.cluster?.caches ?? CacheManager.fromConfig(cfg.cache, { logger: log });
  if (own) await caches.init();
  try {
    if (own) await p2p.start();
    const tq = childSignal(opts.signal, TABLE_TIMEOUT_MS, realTimers, 'piece table');
    let got: { seed: string; table: Buffer };
    try {
      got = await p2p.fileTable(src.key, src.query, MAX_TABLE_BYTES, tq.signal, src.seedHeaders);
    } catch (err) {
      const e = DfError.from(err);
      // the origin's file is not the one asked for: the origin would say the same
      if (e.code === 'DIGEST_MISMATCH' || opts.signal.aborted) throw e;
      return `the seed gave no piece table: ${e.message}`;
    } finally {
      tq.dispose();
    }
    const table = decodeTable(got.table, src.digest);
    const filling = table.filling === true;
    const layout = new PieceLayout(table.size, table.pieceSize);
    const cache = await caches.open({ digest: table.digest, size: table.size }, opts.signal);
    try {
      const { blockCount, tocOffset } = layout.cacheLayout;
      await cache.setLayout(blockCount, tocOffset, opts.signal);
      opts.onStart?.(table.size, cache.filledBytes);
      const member = p2p.joinUnits({ blob: { digest: table.digest, size: table.size }, layout, cache });
      // known to the seed's tracker before the first piece (see ClusterBlobs)
      if (filling) await member.announced;
      let bytes: BytesBySource;
      try {
        bytes = await fetchThroughSwarm(p2p, {
          table,
          cache,
          signal: opts.signal,
          sources: [p2p.peers, p2p.seedFor(got.seed), src.pieces],
          // a table still filling at the seed (cut-through): asked again of the same seed
          refresh: filling
            ? async (sig) => {
                const again = await p2p.fileTable(src.key, src.query, MAX_TABLE_BYTES, sig, src.seedHeaders);
                if (again.seed !== got.seed)
                  throw new DfError('FAILED_PRECONDITION', 'another seed answered');
                return decodeTable(again.table, src.digest);
              }
            : undefined,
          onPiece: (_u, n) => opts.onBytes?.(n),
        });
        await cache.flush(opts.signal);
      } catch (err) {
        // pieces checked against a table still filling (the whole file not checked yet): not kept
        if (filling && !opts.signal.aborted) await cache.drop().catch(() => undefined);
        throw err;
      } finally {
        await member.leave();
      }
      const v = cache.verified ? { ok: true } : await cache.verifyComplete(opts.signal);
      if (!v.ok)
        throw new DfError(
          'DIGEST_MISMATCH',
          `${src.where}: the assembled file does not match ${table.digest} (cache dropped; run again)`,
        );
      const tmp = `${opts.out}.dfnode-tmp`;
      await copyFile(cache.dataPath, tmp);
      await rename(tmp, opts.out);
      return { digest: table.digest, size: table.size, mode: 'p2p', bytes, table: tableDigest(table) };
    } finally {
      await caches.release(cache);
    }
  } finally {
    if (own) {
      await p2p.close();
      await caches.close();
    }
  }
}

/**
 * The whole file from the origin into OUT.dfnode-part (resumed from its length), its digest checked when
 * known, then renamed to OUT.
 */
async function direct(opts: GetFileOptions, reason: string): Promise<GetFileResult> {
  const src = opts.source;
  const part = `${opts.out}.dfnode-part`;
  const have = await stat(part).then(
    (s) => s.size,
    () => 0,
  );
  // from the last byte held: a part that is already complete still gets a 206 (not a 416)
  const from = Math.max(0, have - 1);
  const s = await src.stream(from, opts.signal);
  const resumed = have > 0 && s.start === from;
  const hash = createHash('sha256');
  const fh = await open(part, resumed ? 'r+' : 'w');
  let size = 0;
  const bytes: BytesBySource = {};
  try {
    if (resumed) {
      const buf = Buffer.allocUnsafe(1024 * 1024);
      for (let pos = 0; pos < from;) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, from - pos), pos);
        if (!bytesRead) throw DfError.corrupt(`${part} is shorter than it was a moment ago`);
        hash.update(buf.subarray(0, bytesRead));
        pos += bytesRead;
      }
      size = from;
      if (size) bytes.cache = size;
    }
    opts.onStart?.(s.total ?? 0, size);
    for await (const c of s.body) {
      hash.update(c);
      await fh.write(c, 0, c.length, size);
      size += c.length;
      bytes.registry = (bytes.registry ?? 0) + c.length;
      opts.onBytes?.(c.length);
    }
    await fh.truncate(size);
    await fh.datasync();
  } finally {
    await fh.close();
  }
  if (s.total !== undefined && size !== s.total)
    throw new DfError('NETWORK', `${src.where}: got ${size} of ${s.total} bytes; run again to resume`);
  const digest = 'sha256:' + hash.digest('hex');
  if (src.digest && digest !== src.digest) {
    await rm(part, { force: true });
    throw DfError.digestMismatch(`file at ${src.where}`, src.digest, digest);
  }
  await rename(part, opts.out);
  return { digest, size, mode: 'direct', reason, bytes };
}
