import { randomBytes } from 'node:crypto';
import { mkdir, open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlobCache } from '../cache/blob-cache.js';
import type { CacheManager } from '../cache/cache-manager.js';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { busyAtSource } from '../fetch/types.js';
import type { ServedBlob } from '../p2p/block-server.js';
import type { SeedFileProvider } from '../p2p/seed.js';
import type { Units } from '../p2p/unit-layout.js';
import type { RegistryClient } from '../registry/client.js';
import { parseReference, type ImageReference } from '../registry/reference.js';
import type { TokenBucket } from '../util/token-bucket.js';
import {
  encodeTable,
  PieceHasher,
  PieceLayout,
  pieceSizeFor,
  PIECE_SIZE,
  prefixBits,
  type PieceTable,
} from './piece-table.js';
import { FillingFile } from './filling-file.js';
import { discard, originRequest, originUrl, originValidator, type OriginHeaders } from './origin.js';
import {
  OriginAccess,
  originAllowed,
  raceSignal,
  rehash,
  urlOrigin,
  type Body,
  type FileOrigin,
} from './seed-file-origin.js';

/**
 * Files a seed fetches from their origins at once; beyond, it answers busy (429 with Retry-After) and the
 * node asks again later: the seed is alive, so the node does not go to the origin itself.
 */
const MAX_FETCHING = 16;

/** How long a seed answers a digest with the mismatch its origin gave (ms), and for how many digests. */
const REFUSED_MS = 60_000;
const MAX_REFUSED = 1024;

/** A raw file a seed holds completely, with its piece table. */
interface SeedFile {
  cache: BlobCache;
  table: PieceTable;
  encoded: Buffer;
  layout: PieceLayout;
  lastUsed: number;
  /** Who it was fetched with (FileOrigin.credential); undefined: found in the cache after a restart. */
  credential?: string;
}

/**
 * One fetch of a file from its origin: `live` settles once the origin answered (the file, readable while it
 * fills, when the node named its digest and the origin its size; else undefined), `file` once it is held.
 */
interface Fetch {
  live: Promise<FillingFile | undefined>;
  file: Promise<SeedFile>;
  /** FileOrigin.url: what a node asking with other credentials may join. */
  url?: string;
}

export interface SeedFilesOptions {
  cache: CacheManager;
  /** p2p.seedOrigins: URL prefixes (`https://host[:port][/path]`, `*` = any) this seed fetches from. */
  origins: readonly string[];
  /**
   * Registry blobs (`dfnode get REGISTRY/REPO@DIGEST`): the seed's registry client and whether
   * p2p.seedRegistries allows a registry; without them, only URLs.
   */
  registry?: { client: RegistryClient; allowed(ref: ImageReference): boolean };
  /** The host's download limit (shared with registry traffic). */
  download?: TokenBucket | undefined;
  /** An origin that sends nothing for this long fails the fetch (ms). */
  idleTimeoutMs: number;
  logger?: Logger;
  now?: () => number;
}

/**
 * A seed's raw files (`dfnode get`, mirror blobs without a TOC): fetched whole from an allowed origin once
 * (however many nodes ask: one fetch per URL at a time), hashed into a piece table as they stream by,
 * checked against the digest the node named, then kept in the seed's cache under their content digest
 * and served to nodes piece by piece. A URL is fetched with the headers the node gave for it (its
 * `--header`s: credentials, sent to that origin only, never stored), one fetch per URL at a time (a node
 * asking with other credentials while it is on its way joins it); the table of a file held or being fetched
 * with another credential's fetch (or none, or from before a restart) is answered only once the origin lets
 * the asking node's headers read the URL (OriginAccess).
 */
export class SeedFiles implements SeedFileProvider {
  private readonly files = new Map<string, SeedFile>();
  private readonly fetching = new Map<string, Fetch>();
  /** Files being fetched, by the digest the node named: served piece by piece as they arrive. */
  private readonly filling = new Map<string, FillingFile>();
  /**
   * Digests whose origin sent another file (lately): nodes still asking for its pieces or table get that
   * answer instead of starting another fetch of the same wrong file.
   */
  private readonly refused = new Map<string, { err: DfError; at: number }>();
  /** What each URL held when last fetched: its content digest and validator (ETag/Last-Modified/size). */
  private readonly urls = new Map<string, { digest: string; validator: string }>();
  private readonly closer = new AbortController();
  private readonly log: Logger;
  private readonly now: () => number;
  private readonly tmp: string;
  private readonly access: OriginAccess;
  /** Files being moved from their fetch into the cache, by digest. */
  private readonly moving = new Map<string, Promise<SeedFile>>();

  constructor(private readonly opts: SeedFilesOptions) {
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
    this.tmp = join(opts.cache.dir, 'files-tmp');
    this.access = new OriginAccess(this.now);
  }

  /** Clears temporary files a killed seed left. */
  async init(): Promise<void> {
    await rm(this.tmp, { recursive: true, force: true });
    await mkdir(this.tmp, { recursive: true });
  }

  /**
   * The encoded piece table of the file a node asks for (`url=URL` or `repo=REGISTRY/REPO`, with
   * `digest=sha256:...`; a repository needs the digest), fetching it when this seed does not hold it.
   * `digest`, when given, is checked against the content; without it, a URL fetched before is reused while
   * the origin's validator (HEAD) is unchanged. With a digest and an origin that announces the size, the
   * answer comes as soon as the origin answers: a table marked filling, with the pieces hashed so far, and
   * the pieces are served as they arrive (cut-through); otherwise once the whole file is held.
   */
  async table(query: URLSearchParams, signal: AbortSignal, headers: OriginHeaders = {}): Promise<Buffer> {
    const digest = query.get('digest') ?? undefined;
    if (digest !== undefined && !/^sha256:[0-9a-f]{64}$/.test(digest))
      throw DfError.invalidArgument(`digest ${digest.slice(0, 80)} is not sha256:<64 hex>`);
    const refused = digest !== undefined ? this.refusedFor(digest) : undefined;
    if (refused) throw refused;
    const repo = query.get('repo');
    let origin: FileOrigin;
    let f: SeedFile | undefined;
    let url: URL | undefined;
    if (repo !== null) {
      if (!digest) throw DfError.invalidArgument('a registry blob is asked for by digest');
      origin = this.registryOrigin(repo, digest);
      f = await this.held(digest, signal);
    } else {
      url = originUrl(query.get('url') ?? '');
      if (!originAllowed(this.opts.origins, url))
        throw new DfError(
          'FORBIDDEN',
          `this seed does not fetch from ${url.origin}: not in p2p.seedOrigins (${this.opts.origins.join(', ') || 'empty'})`,
        );
      origin = urlOrigin(url, headers);
      f = digest ? await this.held(digest, signal) : await this.unchanged(url, origin, headers, signal);
    }
    if (!f) {
      let p = this.fetching.get(origin.key);
      if (!p && url && digest) {
        // the same URL on its way with other credentials (for the digest this node names): joined once the
        // origin lets these headers read it, before any of its table is answered
        p = this.fetchOfUrl(url);
        if (p) await this.access.check(url, headers, digest, signal);
      }
      if (!p) {
        if (this.fetching.size >= MAX_FETCHING)
          throw busyAtSource(`this seed is fetching ${MAX_FETCHING} files already; retry later`);
        p = this.fetchFile(origin, digest);
        this.fetching.set(origin.key, p);
        const key = origin.key;
        void p.file.then(
          () => this.fetching.delete(key),
          () => this.fetching.delete(key),
        );
      }
      const live = digest ? await raceSignal(p.live, signal) : undefined;
      if (live && live.digest === digest) return encodeTable(live.table());
      f = await raceSignal(p.file, signal);
      if (digest && f.table.digest !== digest)
        throw DfError.digestMismatch(`file at ${origin.where}`, digest, f.table.digest);
    }
    // a file held from a fetch with other credentials (or none, or from before a restart): only when the
    // origin lets this node's headers read the URL
    if (url && f.credential !== origin.credential)
      await this.access.check(url, headers, f.table.digest, signal);
    f.lastUsed = this.now();
    return f.encoded;
  }

  /** A fetch of `url` on its way with any credentials (at most MAX_FETCHING to look through). */
  private fetchOfUrl(url: URL): Fetch | undefined {
    const u = url.toString();
    for (const p of this.fetching.values()) if (p.url === u) return p;
    return undefined;
  }

  /** A blob of `repo` (REGISTRY/REPO) when p2p.seedRegistries allows its registry, else FORBIDDEN. */
  private registryOrigin(repo: string, digest: string): FileOrigin {
    const reg = this.opts.registry;
    const ref = parseReference(repo);
    if (!reg || !reg.allowed(ref))
      throw new DfError(
        'FORBIDDEN',
        `this seed does not fetch blobs of ${ref.registry}: not in p2p.seedRegistries`,
      );
    return {
      key: `${ref.repoString}@${digest}`,
      where: `${ref.repoString}@${digest}`,
      credential: 'registry',
      open: async (signal) => {
        const { stream, size } = await reg.client.getBlob(ref, digest, { signal });
        return {
          body: stream as unknown as Body,
          validator: '',
          size: Number.isSafeInteger(size) ? size : undefined,
        };
      },
    };
  }

  /** The file this seed holds under `digest` (after a restart: its complete cache, hashed again). */
  private async held(digest: string, signal: AbortSignal): Promise<SeedFile | undefined> {
    const f = this.files.get(digest);
    if (f) return f;
    const moving = this.moving.get(digest);
    if (moving) return moving.catch(() => undefined);
    const known = this.opts.cache.list().find((b) => b.digest === digest && b.complete);
    if (!known) return undefined;
    const cache = await this.opts.cache.open({ digest, size: known.size }, signal);
    try {
      const layout = new PieceLayout(known.size, pieceSizeFor(known.size));
      // complete under any layout (pieces, or a DFB layer's blocks): the same bytes, served as they are
      if (!cache.isComplete) {
        await this.opts.cache.release(cache);
        return undefined;
      }
      const hasher = new PieceHasher(layout.pieceSize);
      for (let u = 0; u < layout.units; u++)
        hasher.update(await cache.read(layout.offset(u), layout.length(u), signal));
      const table = hasher.finish();
      if (table.digest !== digest) {
        await cache.drop(signal);
        await this.opts.cache.release(cache);
        return undefined;
      }
      return this.keep(cache, table);
    } catch (err) {
      await this.opts.cache.release(cache);
      throw err;
    }
  }

  /**
   * The file last fetched from `url` with these headers when the origin says it has not changed since (same
   * validator).
   */
  private async unchanged(
    url: URL,
    origin: FileOrigin,
    headers: OriginHeaders,
    signal: AbortSignal,
  ): Promise<SeedFile | undefined> {
    const known = this.urls.get(origin.key);
    const f = known && this.files.get(known.digest);
    if (!known || !f || !known.validator) return undefined;
    const res = await originRequest(url, { method: 'HEAD', headers, signal });
    discard(res.body);
    return originValidator(res.headers) === known.validator ? f : undefined;
  }

  private keep(cache: BlobCache, table: PieceTable, credential?: string): SeedFile {
    const f: SeedFile = {
      cache,
      table,
      encoded: encodeTable(table),
      layout: new PieceLayout(table.size, table.pieceSize),
      lastUsed: this.now(),
      ...(credential !== undefined && { credential }),
    };
    this.files.set(table.digest, f);
    return f;
  }

  /** Starts the fetch of a file (see Fetch). */
  private fetchFile(origin: FileOrigin, digest: string | undefined): Fetch {
    let onLive!: (f: FillingFile | undefined) => void;
    let liveFailed!: (err: unknown) => void;
    const live = new Promise<FillingFile | undefined>((resolve, reject) => {
      onLive = resolve;
      liveFailed = reject;
    });
    live.catch(() => undefined);
    const file = this.fetchInto(origin, digest, onLive);
    // before the origin answered: the open failed (after, `live` is settled and this does nothing)
    file.catch(liveFailed);
    return { live, file, ...(origin.url !== undefined && { url: origin.url }) };
  }

  /**
   * Streams the origin's file into a temporary file while hashing it into a piece table (served piece by
   * piece meanwhile: FillingFile), checks it, then moves it into the cache under its content digest (piece
   * by piece: bounded memory).
   */
  private async fetchInto(
    origin: FileOrigin,
    digest: string | undefined,
    onLive: (f: FillingFile | undefined) => void,
  ): Promise<SeedFile> {
    const signal = this.closer.signal;
    const where = origin.where;
    this.log.info({ from: where }, 'seed fetches a file from its origin');
    const { body, validator, size } = await origin.open(signal);
    const path = join(this.tmp, randomBytes(8).toString('hex'));
    // the size the origin announced sets the pieces (the same as when held() hashes the file again)
    const hasher = new PieceHasher(size !== undefined && size > 0 ? pieceSizeFor(size) : PIECE_SIZE);
    let fh: FileHandle | undefined;
    let live: FillingFile | undefined;
    try {
      fh = await open(path, 'w+');
      const cut = digest !== undefined && size !== undefined && size > 0 && !this.filling.has(digest);
      if (cut) {
        live = new FillingFile(digest, size, fh, hasher);
        this.filling.set(digest, live);
      }
      onLive(live);
      let idle: NodeJS.Timeout | undefined;
      const arm = () => {
        clearTimeout(idle);
        idle = setTimeout(
          () => body.destroy(DfError.timeout(`${where} sent nothing for ${this.opts.idleTimeoutMs} ms`)),
          this.opts.idleTimeoutMs,
        );
      };
      arm();
      try {
        for await (const c of body) {
          const chunk = c as Buffer;
          arm();
          await this.opts.download?.take(chunk.length, signal);
          if (size !== undefined && hasher.bytes + chunk.length > size)
            throw DfError.corrupt(`${where} sent more than the ${size} bytes it announced`);
          hasher.update(chunk);
          await fh.write(chunk, 0, chunk.length, hasher.bytes - chunk.length);
          live?.progress();
        }
      } finally {
        clearTimeout(idle);
      }
      let table = hasher.finish();
      if (table.size === 0) throw DfError.unsupported(`the file at ${where} is empty: nothing to distribute`);
      // a size learnt only at the end: the table is cut as for a known size (as held() would cut it)
      if (table.pieceSize !== pieceSizeFor(table.size)) table = await rehash(fh, table.size, signal);
      if (size !== undefined && table.size !== size)
        throw DfError.corrupt(`${where} sent ${table.size} of the ${size} bytes it announced`);
      if (digest && table.digest !== digest)
        throw DfError.digestMismatch(`file at ${where}`, digest, table.digest);
      // checked: the last piece goes to the nodes waiting for it while the file moves into the cache
      live?.complete();
      this.urls.set(origin.key, { digest: table.digest, validator });
      const have = this.files.get(table.digest);
      if (have) return have;
      // held() of the digest meanwhile waits for this (not a second copy of the file's state)
      const moved = this.moveIntoCache(fh, path, table, where, origin.credential, signal);
      this.moving.set(table.digest, moved);
      try {
        return await moved;
      } finally {
        if (this.moving.get(table.digest) === moved) this.moving.delete(table.digest);
      }
    } catch (err) {
      discard(body);
      const e = DfError.from(err, `seed fetch of ${where}`);
      if (digest && (e.code === 'DIGEST_MISMATCH' || e.code === 'CORRUPT')) this.refuse(digest, e);
      live?.fail(e);
      onLive(undefined);
      throw e;
    } finally {
      if (live) {
        if (this.filling.get(live.digest) === live) this.filling.delete(live.digest);
        // reads in progress finish first; waiting ones go on to the cache (or fail with the fetch)
        await live.close();
      }
      await fh?.close();
      await rm(path, { force: true });
    }
  }

  /** The fetched file (checked, in the temporary file `fh`) into the cache under its digest, piece by piece. */
  private async moveIntoCache(
    fh: FileHandle,
    path: string,
    table: PieceTable,
    where: string,
    credential: string,
    signal: AbortSignal,
  ): Promise<SeedFile> {
    const cache = await this.opts.cache.open({ digest: table.digest, size: table.size }, signal);
    try {
      const layout = new PieceLayout(table.size, table.pieceSize);
      const { blockCount, tocOffset } = layout.cacheLayout;
      const held = cache.layout;
      const other = held && (held.blockCount !== blockCount || held.tocOffset !== tocOffset);
      // open here as a DFB layer too: not this file's to reset (else, e.g. pieces of another size, it is)
      if (other && !cache.isComplete && this.opts.cache.users(table.digest) > 1)
        throw new DfError(
          'FAILED_PRECONDITION',
          `this seed holds ${table.digest} as a DFB layer that is not complete yet; ask again later`,
        );
      const asIs = other && cache.isComplete; // complete under any layout: the same bytes
      if (!asIs) await cache.setLayout(blockCount, tocOffset, signal);
      const buf = Buffer.allocUnsafe(table.pieceSize);
      for (let u = 0; u < layout.units && !asIs; u++) {
        if (cache.has(u)) continue;
        const n = layout.length(u);
        const { bytesRead } = await fh.read(buf, 0, n, layout.offset(u));
        if (bytesRead !== n) throw DfError.internal(`seed temp file ${path} is short`);
        await cache.write(u, layout.offset(u), Buffer.from(buf.subarray(0, n)), signal);
      }
      await cache.flush(signal);
    } catch (err) {
      await this.opts.cache.release(cache);
      throw err;
    }
    this.log.info({ from: where, digest: table.digest, size: table.size }, 'seed holds the file');
    return this.keep(cache, table, credential);
  }

  private refuse(digest: string, err: DfError): void {
    this.refused.delete(digest);
    if (this.refused.size >= MAX_REFUSED) this.refused.delete(this.refused.keys().next().value!);
    this.refused.set(digest, { err, at: this.now() });
  }

  /** The mismatch the origin of `digest` gave within REFUSED_MS, if any. */
  private refusedFor(digest: string): DfError | undefined {
    const r = this.refused.get(digest);
    if (r && this.now() - r.at < REFUSED_MS) return r.err;
    if (r) this.refused.delete(digest);
    return undefined;
  }

  /** The file held under `digest`, served to nodes piece by piece (undefined: not a file of this seed). */
  /** Pieces of `digest` the seed can send now (bit u = piece u): all of a held file, a filling one's prefix. */
  bits(digest: string): Uint8Array | undefined {
    const f = this.files.get(digest);
    if (f) return prefixBits(f.layout.units, f.layout.units);
    const live = this.filling.get(digest);
    return live && prefixBits(live.layout.units, live.readyPieces);
  }

  served(digest: string): (ServedBlob & { readonly layout: Units }) | undefined {
    const f = this.files.get(digest);
    if (!f) {
      const live = this.filling.get(digest);
      if (live) return live.served(() => this.files.get(digest) && this.served(digest));
      const refused = this.refusedFor(digest);
      if (!refused) return undefined;
      return {
        size: Number.MAX_SAFE_INTEGER,
        layout: new PieceLayout(Number.MAX_SAFE_INTEGER, PIECE_SIZE),
        read: () => Promise.reject(refused),
      };
    }
    f.lastUsed = this.now();
    return {
      size: f.table.size,
      layout: f.layout,
      // told with each piece as well: a node may still hold the table of when the file was filling
      pieceDigest: (offset, length) => {
        const u = f.layout.pieceAt(offset, length);
        return u === undefined ? undefined : f.table.pieces[u]?.toString('hex');
      },
      read: async (offset, length, signal) => {
        if (!f.layout.unitsFor(offset, length) || !this.files.has(digest)) return undefined;
        f.lastUsed = this.now();
        return f.cache.read(offset, length, signal);
      },
    };
  }

  /** Releases the files no node asked for in `idleMs` (their caches may then be evicted). */
  async releaseIdle(idleMs: number): Promise<void> {
    const now = this.now();
    for (const [digest, f] of this.files) {
      if (now - f.lastUsed < idleMs) continue;
      this.files.delete(digest);
      await this.opts.cache.release(f.cache).catch(() => undefined);
    }
  }

  async close(): Promise<void> {
    this.closer.abort(DfError.aborted('seed closed'));
    await Promise.allSettled([...this.fetching.values()].map((f) => f.file));
    for (const f of this.files.values()) await this.opts.cache.release(f.cache).catch(() => undefined);
    this.files.clear();
  }
}
