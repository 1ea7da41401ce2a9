import { createHash } from 'node:crypto';
import type { FileHandle } from 'node:fs/promises';
import { DfError } from '../errors.js';
import { discard, originRequest, originValidator, type OriginHeaders } from './origin.js';
import { PieceHasher, PieceLayout, pieceSizeFor, type PieceTable } from './piece-table.js';

// Where a seed fetches a raw file from, with whose credentials, and whether another node's credentials may
// read the file it holds (src/mirror/seed-files.ts).

/** A response body of an origin. */
export type Body = AsyncIterable<Uint8Array> & {
  destroy(err?: Error): unknown;
  on(ev: 'error', f: () => void): unknown;
};

/** Where a seed fetches a file from: an http(s) URL, or a blob of a registry repository. */
export interface FileOrigin {
  /** One fetch at a time per key (a URL's includes the credential: see originCredential). */
  key: string;
  /** The URL of a URL's origin (without the credential): fetches of it with other credentials are joined. */
  url?: string;
  /** For messages (no query string, no credentials). */
  where: string;
  /** Who fetched it: originCredential of the node's headers, or 'registry' (the seed's own credentials). */
  credential: string;
  /** The body, its validator and the size the origin announced (undefined: not announced). */
  open(signal: AbortSignal): Promise<{ body: Body; validator: string; size: number | undefined }>;
}

/** The hash the headers a node gives for an origin are known by ('-': none). */
export function originCredential(headers: Readonly<OriginHeaders>): string {
  const pairs = Object.entries(headers).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return pairs.length ? createHash('sha256').update(JSON.stringify(pairs)).digest('hex') : '-';
}

/** Whether p2p.seedOrigins (URL prefixes, `*` = any) lets a seed fetch `url`. */
export function originAllowed(origins: readonly string[], url: URL): boolean {
  return origins.some((o) => {
    if (o === '*') return true;
    let e: URL;
    try {
      e = new URL(o);
    } catch {
      return false;
    }
    return e.protocol === url.protocol && e.host === url.host && url.pathname.startsWith(e.pathname);
  });
}

/** A URL as the origin of a file: a GET with the node's headers (none: none), redirects not followed. */
export function urlOrigin(url: URL, headers: OriginHeaders): FileOrigin {
  const credential = originCredential(headers);
  return {
    key: credential === '-' ? url.toString() : `${url.toString()}|${credential}`,
    url: url.toString(),
    where: `${url.origin}${url.pathname}`,
    credential,
    open: async (signal) => {
      const res = await originRequest(url, { headers, signal });
      const declared = res.headers['content-length'];
      const size = typeof declared === 'string' && /^\d{1,16}$/.test(declared) ? Number(declared) : undefined;
      return { body: res.body, validator: originValidator(res.headers), size };
    },
  };
}

/**
 * Which credentials the origin let read which file: before a seed answers a node the table of a file it
 * fetched with other credentials (or none, or before a restart), the origin must let the node's headers read
 * the URL (HEAD, or a one-byte GET where HEAD is not answered); a yes is remembered for ttlMs. A refusal
 * is the origin's (UNAUTHORIZED, FORBIDDEN, NOT_FOUND), answered to the node as a refusal of the seed.
 */
export class OriginAccess {
  private readonly yes = new Map<string, number>();

  constructor(
    private readonly now: () => number,
    private readonly ttlMs = 300_000,
    private readonly max = 4096,
  ) {}

  async check(url: URL, headers: OriginHeaders, digest: string, signal: AbortSignal): Promise<void> {
    const key = `${originCredential(headers)}|${digest}|${url.toString()}`;
    const at = this.yes.get(key);
    if (at !== undefined && this.now() - at < this.ttlMs) return;
    try {
      discard((await originRequest(url, { method: 'HEAD', headers, signal })).body);
    } catch (err) {
      const e = DfError.from(err);
      if (e.code !== 'NETWORK' || signal.aborted) throw e;
      // an origin that answers no HEAD (405 and the like): the first byte
      discard((await originRequest(url, { headers, range: 'bytes=0-0', signal })).body);
    }
    this.yes.delete(key);
    if (this.yes.size >= this.max) this.yes.delete(this.yes.keys().next().value!);
    this.yes.set(key, this.now());
  }
}

/** The piece table of the `size` bytes of `fh`, cut by pieceSizeFor (read piece by piece). */
export async function rehash(fh: FileHandle, size: number, signal: AbortSignal): Promise<PieceTable> {
  const layout = new PieceLayout(size, pieceSizeFor(size));
  const hasher = new PieceHasher(layout.pieceSize);
  const buf = Buffer.allocUnsafe(layout.pieceSize);
  for (let u = 0; u < layout.units; u++) {
    signal.throwIfAborted();
    const n = layout.length(u);
    const { bytesRead } = await fh.read(buf, 0, n, layout.offset(u));
    if (bytesRead !== n) throw DfError.internal('seed temp file is short');
    hasher.update(buf.subarray(0, n));
  }
  return hasher.finish();
}

/** `p` unless `signal` aborts first (the shared fetch goes on for the other nodes). */
export function raceSignal<T>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) return Promise.reject(DfError.from(signal.reason));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(DfError.from(signal.reason));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
