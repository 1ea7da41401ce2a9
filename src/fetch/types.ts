import { DfError } from '../errors.js';
import type { Toc } from '../blob/toc.js';

/** Who served a block: for metrics ("bytes by source") and for isolating bad sources. */
export type SourceKind = 'cache' | 'memory' | 'peer' | 'seed' | 'registry';

/** Fetch priorities, most urgent first. */
export enum Priority {
  /** A process is blocked on this read. */
  Blocked = 0,
  /** Trace/readahead prefetch. */
  Prefetch = 1,
  /** Background fill of the whole layer. */
  Fill = 2,
}

/** What a source may know about the request it serves (how urgent it is). */
export interface FetchContext {
  /** The priority of the run at the time of the request (a fill run may be promoted later). */
  priority: Priority;
  /**
   * The run was chosen by a fill planner for this source: the source may defer it (a seed that is already
   * sending these units to another peer), and the planner plans again.
   */
  planned?: boolean;
  /** Whether a reader waits on the run now (a fill run may be promoted while it is in flight). */
  waitedOn?: () => boolean;
  /**
   * A source that holds a fill run's bytes back for fewer wake-ups (SO_RCVLOWAT: src/util/rcv-lowat.ts)
   * registers how to stop: the fetcher calls it when a reader starts waiting on the run.
   */
  onHurry?: (hurry: () => void) => void;
  /**
   * Nobody is blocked on the run: it is fill (this host's, or a node's planned fill run at a seed). The
   * source may queue it behind other such runs (a seed pipelines them on one registry connection).
   */
  bulk?: boolean;
  /**
   * Optional: a source that receives the range in pieces may tell of them (`data` is the whole range's
   * buffer, its first `filled` bytes are in), so that the fetcher verifies and hands out the run's first
   * units before its last ones arrive (cut-through: a seed forwards a block as soon as it is verified).
   */
  progress?: (data: Buffer, filled: number) => void;
  /**
   * Optional: told the SHA-256 a seed sent with the range (one piece of a raw file it is still fetching,
   * whose digest the node's piece table does not list yet).
   */
  pieceDigest?: (sha256: Buffer) => void;
}

/** A blob as the fetch layer sees it. */
export interface BlobRef {
  /** sha256:hex of the DFB blob. */
  digest: string;
  size: number;
}

/**
 * A remote source of a blob's stored bytes (peers, seeds, the registry). A source of kind 'registry' is
 * the origin: background fill reaches it only when every source before it has nothing (no seed is up), so
 * that a cluster goes back to the registry once per block. Returns exactly the
 * requested bytes, unverified (the caller verifies every block), or throws a DfError.
 */
export interface BlockSource {
  readonly kind: SourceKind;
  readonly name: string;
  fetch(
    blob: BlobRef,
    offset: number,
    length: number,
    signal: AbortSignal,
    ctx?: FetchContext,
  ): Promise<Buffer>;
  /**
   * Optional: told when the unit at [offset, offset+length) of `data` (a buffer this source returned)
   * failed verification, so that the source can isolate whoever served it.
   */
  badBlock?(blob: BlobRef, data: Buffer, offset: number, length: number): void;
}

/**
 * A source that has nothing for a request (no peer holds the range) throws this: the fetcher tries the
 * next source at once, without a backoff and without counting an attempt.
 */
export function sourceUnavailable(message: string): DfError {
  return new DfError('NOT_FOUND', message, { details: { sourceUnavailable: true } });
}

export function isSourceUnavailable(err: unknown): boolean {
  return err instanceof DfError && err.details.sourceUnavailable === true;
}

/**
 * A holder refused a planned run because all its upload slots are taken (HTTP 429): nothing failed, the
 * planner asks another holder (or later).
 */
export function busyAtSource(message: string): DfError {
  return DfError.answer('NOT_FOUND', message, { details: { sourceUnavailable: true, busy: true } });
}

export function isBusy(err: unknown): boolean {
  return err instanceof DfError && err.details.busy === true;
}

/**
 * A source deferred a planned run (see FetchContext.planned): nothing failed, the planner picks again,
 * avoiding `away` too (units the seed is sending other nodes, when it said).
 */
export function deferredBySource(message: string, away: readonly number[] = []): DfError {
  return DfError.answer('NOT_FOUND', message, { details: { sourceUnavailable: true, deferred: true, away } });
}

export function isDeferred(err: unknown): boolean {
  return err instanceof DfError && err.details.deferred === true;
}

/** The units a deferral said are on their way to other nodes (none when it did not say). */
export function awayUnits(err: unknown): readonly number[] {
  const away = err instanceof DfError ? err.details.away : undefined;
  return Array.isArray(away) ? (away as number[]) : [];
}

/**
 * A seed handed a planned run back (its own registry link is full): the node fetches it from the registry
 * itself, claimed for it at the tracker, so that the registry still sends each unit to the cluster once.
 */
export function handedBackBySource(message: string): DfError {
  return DfError.answer('NOT_FOUND', message, { details: { sourceUnavailable: true, handedBack: true } });
}

export function isHandedBack(err: unknown): boolean {
  return err instanceof DfError && err.details.handedBack === true;
}

/** A source's answer to a planned run that only its planner acts on: deferred, busy or handed back. */
export function isPlannerAnswer(err: unknown): boolean {
  return isDeferred(err) || isBusy(err) || isHandedBack(err);
}

/**
 * What the filesystem needs to serve file contents: the seam between src/fetch and src/fuse.
 * `read` resolves with the uncompressed bytes of inode `ino` in [offset, offset+length) (clamped to the file
 * size), fetching missing blocks at Priority.Blocked, or rejects with a DfError (TIMEOUT, NETWORK, CORRUPT,
 * NO_SPACE, ...) within a bounded time — never hangs.
 */
export interface FileReader {
  readonly toc: Toc;
  read(ino: number, offset: number, length: number, signal?: AbortSignal, ctx?: ReadContext): Promise<Buffer>;
  /** Optional: a file open on `ino` was closed (read-ahead stops). */
  release?(ino: number): void;
}

/**
 * Who asked for a read and what it cost: the filesystem passes one to FileReader.read, which adds the time the
 * read waited on remote fetches (network) to `blockedMs`; a read served from memory or the disk cache adds 0.
 */
export interface ReadContext {
  /** The reading process (FUSE request's pid, in the daemon's pid namespace); 0 when the binding cannot tell. */
  pid: number;
  /** Milliseconds the read waited on remote fetches (filled in by the reader; may be 0 on a fast network). */
  blockedMs: number;
  /** Set by the reader when the read waited on a remote fetch at all (blockedMs has a 1 ms resolution). */
  blocked?: boolean;
}
