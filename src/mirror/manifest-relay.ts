import { createHash } from 'node:crypto';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { readBody } from '../registry/http-body.js';
import { setNewest } from '../util/bounded-map.js';
import { bound } from '../util/timers.js';
import { credentialKey } from './blob-access.js';
import { ManifestCache, type CachedManifest } from './manifest-cache.js';
import type { ManifestStore } from './manifest-store.js';
import type { Upstream } from './upstream.js';

/** Largest manifest accepted from a registry or a seed (distribution's own limit is 4 MiB). */
export const MAX_MANIFEST = 4 << 20;
/** Largest error body relayed from a registry. */
export const MAX_ERROR_BODY = 64 << 10;
/** Headers of a registry's refusal passed on (its challenge among them). */
export const REFUSAL_HEADERS = ['content-type', 'www-authenticate', 'docker-content-digest', 'retry-after'];

/** One manifest request of an engine: which manifest, with the engine's own credentials and Accept. */
export interface ManifestQuery {
  registry: string;
  repository: string;
  /** A tag or a digest. */
  reference: string;
  authorization?: string;
  accept?: string;
}

/**
 * A manifest (`from`: memory within manifestTtlMs, the registry now, a seed that had it from the registry,
 * or `stale`: kept from before while the registry cannot be reached), or the registry's refusal (401 with
 * its challenge, 404, ...) to relay as it is.
 */
export type ManifestAnswer =
  | {
      kind: 'manifest';
      manifest: CachedManifest;
      from: 'memory' | 'registry' | 'seed' | 'stale';
      /** The copy fetched without credentials, answered to a request with some: the repository is public. */
      public?: boolean;
    }
  | { kind: 'refused'; status: number; headers: Record<string, string>; body: Buffer };

/**
 * Asked before the registry (a node: the cluster's seed, see cluster-manifests.ts): its answer, or
 * undefined when it has none (no seed, a seed down or refusing). A `stale` manifest is kept as the fallback
 * while this relay asks the registry itself.
 */
export type ManifestVia = (q: ManifestQuery, signal: AbortSignal) => Promise<ManifestAnswer | undefined>;

export interface ManifestRelayOptions {
  upstream: Upstream;
  /** A manifest is answered from memory for this long before the registry is asked again. */
  ttlMs?: number;
  /**
   * A manifest asked for by digest (content that cannot change) is answered from memory this long, to the
   * credential that fetched it (default 5 min, as the mirror's blob access: mirror.accessTtlMs).
   */
  digestTtlMs?: number;
  /** While the registry cannot be reached, a manifest this old is still answered. */
  staleMs?: number;
  /** Manifests on disk, answered stale after a restart too (same key, same age limit). */
  store?: ManifestStore;
  via?: ManifestVia;
  /** How long `via` may take before the registry is asked instead (ms; default 60 s). */
  viaTimeoutMs?: number;
  /** Different manifests being fetched at once; more are refused (busy). */
  maxInflight?: number;
  /**
   * A repository whose manifest the registry answered without credentials is public for this long: requests
   * with credentials take the copy fetched without (default 5 min).
   */
  publicTtlMs?: number;
  logger?: Logger;
  now?: () => number;
}

const isDigestRef = (reference: string) => /^[a-z0-9]+:/.test(reference);

/** The same query without credentials. */
function anonymous(q: ManifestQuery): ManifestQuery {
  const { authorization: _, ...rest } = q;
  return rest;
}

/**
 * An Accept header as a set of media types (order and spacing dropped): engines list the same types in
 * different orders, and registries answer by which types are there, with one of them.
 */
function acceptKey(accept: string | undefined): string {
  if (!accept) return '';
  const types = accept.split(',').map((t) =>
    t
      .trim()
      .replace(/\s*;\s*/g, ';')
      .toLowerCase(),
  );
  return [...new Set(types.filter(Boolean))].sort().join(',');
}

/**
 * The key a manifest is kept under: one per registry, repository, reference, Accept (as a set) and credential. A
 * manifest asked for by digest is the same content whatever the Accept (it is checked against the digest), so
 * its key has none: the answer to a tag (any Accept) is kept under its digest's key too.
 */
export function manifestKey(q: ManifestQuery): string {
  const accept = isDigestRef(q.reference) ? '' : acceptKey(q.accept);
  return [q.registry, q.repository, q.reference, accept, credentialKey(q.authorization)].join('|');
}

/** The keys `m`, the answer to `q` (kept under `key`), is kept under: a tag's also under its digest's. */
function keysOf(key: string, q: ManifestQuery, m: CachedManifest): string[] {
  return isDigestRef(q.reference) ? [key] : [key, manifestKey({ ...q, reference: m.digest })];
}

/**
 * A manifest entry for `body`, its digest computed here; one asked for by digest must have that digest
 * (DIGEST_MISMATCH otherwise: the source sent other content).
 */
export function manifestEntry(
  body: Buffer,
  contentType: string | undefined,
  q: ManifestQuery,
  storedAt: number,
  source: string,
): CachedManifest {
  const algo = q.reference.startsWith('sha512:') ? 'sha512' : 'sha256';
  const digest = `${algo}:${createHash(algo).update(body).digest('hex')}`;
  if (isDigestRef(q.reference) && digest !== q.reference)
    throw new DfError(
      'DIGEST_MISMATCH',
      `${source} answered manifest ${q.reference} of ${q.registry}/${q.repository} with content of digest ${digest}`,
    );
  return { body, contentType: contentType ?? 'application/vnd.oci.image.manifest.v1+json', digest, storedAt };
}

/**
 * Manifests for engines, as the mirror answers them and as a seed answers them for its nodes: from memory
 * for a few seconds (tags move; one registry request for every engine asking with the same credential
 * meanwhile, and requests for a manifest already on its way join it), else from `via` (a node asks the
 * cluster's seed), else from the registry with the engine's own credentials. While the registry cannot be
 * reached, the newest copy within staleMs (memory, disk, the seed's) is answered. Every key holds the hash of
 * the credential: a manifest fetched with one is never answered to a request with another or none.
 */
export class ManifestRelay {
  private readonly cache = new ManifestCache();
  private readonly inflight = new Map<string, Promise<ManifestAnswer>>();
  /** registry/repository → when the registry last answered a manifest of it without credentials. */
  private readonly publicRepos = new Map<string, number>();
  private readonly log: Logger;
  private readonly now: () => number;
  readonly ttlMs: number;
  readonly staleMs: number;
  /** Answers by where they came from; requests that joined a fetch on its way are counted as joined only. */
  readonly counters = { memory: 0, registry: 0, seed: 0, stale: 0, refused: 0, joined: 0, mismatches: 0 };
  private readonly closing = new AbortController();
  private initialized: Promise<void> | undefined;

  constructor(private readonly opts: ManifestRelayOptions) {
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
    this.ttlMs = opts.ttlMs ?? 5_000;
    this.staleMs = opts.staleMs ?? 3_600_000;
  }

  /** Reads the disk's index (once, however many servers answer from this relay). */
  init(): Promise<void> {
    return (this.initialized ??= this.opts.store?.init() ?? Promise.resolve());
  }

  /** Ends fetches on their way (their requests get the abort). */
  close(): void {
    this.closing.abort(DfError.aborted('manifest relay closed'));
  }

  /**
   * The answer for `q`. Throws when neither the registry nor a kept copy can answer (NETWORK/TIMEOUT), on a
   * digest mismatch (DIGEST_MISMATCH), or busy (isBusy) beyond maxInflight different manifests at once.
   */
  async get(q: ManifestQuery, signal: AbortSignal): Promise<ManifestAnswer> {
    const key = manifestKey(q);
    const ttl = isDigestRef(q.reference)
      ? Math.max(this.ttlMs, this.opts.digestTtlMs ?? 300_000)
      : this.ttlMs;
    const fresh = this.cache.get(key, ttl, this.now());
    if (fresh) return this.count({ kind: 'manifest', manifest: fresh, from: 'memory' });
    if (q.authorization !== undefined && this.isPublic(q)) {
      // what anyone may read is answered from the one copy fetched without credentials: one registry
      // request for every engine, whatever token each holds (a refusal: asked with the credential below)
      const a = await this.get(anonymous(q), signal).catch(() => undefined);
      if (a?.kind === 'manifest') return { ...a, public: true };
    }
    let p = this.inflight.get(key);
    const joined = p !== undefined;
    if (!p) {
      if (this.inflight.size >= (this.opts.maxInflight ?? 256))
        throw new DfError('NETWORK', `${this.inflight.size} manifests are being fetched already; retry`, {
          details: { busy: true },
        });
      // one fetch for every request of the same key: it runs to its end (bounded by the registry client's
      // time limits) even when the request that started it goes away, and the others take its answer
      p = this.load(q, key)
        .then((a) => {
          this.markPublic(q, a);
          return a;
        })
        .finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    const a = await bound(p, { signal, what: `manifest ${q.reference}` });
    if (!joined) return this.count(a);
    this.counters.joined++;
    return a;
  }

  /** Whether the registry answered this repository's manifests without credentials within publicTtlMs. */
  private isPublic(q: ManifestQuery): boolean {
    const at = this.publicRepos.get(`${q.registry}/${q.repository}`);
    return at !== undefined && this.now() - at <= (this.opts.publicTtlMs ?? 300_000);
  }

  private markPublic(q: ManifestQuery, a: ManifestAnswer): void {
    if (q.authorization !== undefined) return;
    const repo = `${q.registry}/${q.repository}`;
    this.publicRepos.delete(repo);
    // refused without credentials (no longer public): requests with credentials go as they came
    if (a.kind !== 'manifest' || a.from === 'stale') return;
    setNewest(this.publicRepos, repo, this.now(), 4096);
  }

  private count(a: ManifestAnswer): ManifestAnswer {
    if (a.kind === 'refused') this.counters.refused++;
    else this.counters[a.from]++;
    return a;
  }

  private async load(q: ManifestQuery, key: string): Promise<ManifestAnswer> {
    const signal = this.closing.signal;
    let viaStale: CachedManifest | undefined;
    if (this.opts.via) {
      // a seed that failed, sent other content or did not answer in time: the registry is asked
      const viaSignal = AbortSignal.any([signal, AbortSignal.timeout(this.opts.viaTimeoutMs ?? 60_000)]);
      const a = await bound(this.opts.via(q, viaSignal), {
        signal: viaSignal,
        what: 'manifest from a seed',
      }).catch((err: unknown) => {
        this.onError(err);
        return undefined;
      });
      if (a?.kind === 'refused') return a;
      if (a?.kind === 'manifest' && a.from !== 'stale') {
        await this.keep(key, a.manifest, q);
        return a;
      }
      if (a) viaStale = a.manifest;
    }
    const headers: Record<string, string> = {};
    if (q.authorization) headers.authorization = q.authorization;
    if (q.accept) headers.accept = q.accept;
    const path = `/v2/${q.repository}/manifests/${encodeURIComponent(q.reference)}`;
    let up;
    try {
      up = await this.opts.upstream.request('GET', q.registry, path, headers, signal);
    } catch (err) {
      // a copy fetched without credentials is what anyone may read: it serves a request with credentials too
      const anon =
        q.authorization !== undefined ? await this.newestKept(manifestKey(anonymous(q))) : undefined;
      const kept = await this.newestKept(key, viaStale);
      const old = kept && (!anon || kept.storedAt >= anon.storedAt) ? kept : anon;
      if (!old) throw err;
      this.log.warn(
        { registry: q.registry, ref: q.reference },
        'registry unreachable: answering a kept manifest',
      );
      // kept in memory (a tag's under its digest too), so that the next request within staleMs does not read
      // the disk again
      for (const k of keysOf(key, q, old))
        if (old !== this.cache.get(k, this.staleMs, this.now())) this.cache.set(k, old);
      return { kind: 'manifest', manifest: old, from: 'stale', ...(old === anon && { public: true }) };
    }
    if (up.status !== 200) {
      const h: Record<string, string> = {};
      for (const name of REFUSAL_HEADERS) {
        const v = up.headers[name];
        if (typeof v === 'string') h[name] = v;
      }
      // a longer error body is dropped: the status and challenge are what the engine needs
      const body = await readBody(up.body, MAX_ERROR_BODY, 'error answer').catch(() => Buffer.alloc(0));
      return { kind: 'refused', status: up.status, headers: h, body };
    }
    const body = await readBody(
      up.body,
      MAX_MANIFEST,
      `manifest ${q.registry}/${q.repository}:${q.reference}`,
    );
    const ct = up.headers['content-type'];
    const entry = this.entry(body, typeof ct === 'string' ? ct : undefined, q, `registry ${q.registry}`);
    await this.keep(key, entry, q);
    return { kind: 'manifest', manifest: entry, from: 'registry' };
  }

  private entry(body: Buffer, ct: string | undefined, q: ManifestQuery, source: string): CachedManifest {
    try {
      return manifestEntry(body, ct, q, this.now(), source);
    } catch (err) {
      this.onError(err);
      throw err;
    }
  }

  /** A source that sent other content than the digest asked for is counted and logged. */
  private onError(err: unknown): void {
    const e = DfError.from(err);
    if (e.code !== 'DIGEST_MISMATCH') return;
    this.counters.mismatches++;
    this.log.warn({ err: e }, 'manifest with the wrong digest refused');
  }

  /**
   * In memory and on disk (a failed write is logged: memory still answers); a tag's answer in memory under
   * its digest's key too, so that the engine's next request (containerd resolves a tag with HEAD, then GETs
   * the digest) is answered without another registry request: Docker Hub counts every manifest GET.
   */
  private async keep(key: string, m: CachedManifest, q: ManifestQuery): Promise<void> {
    // on disk under both keys too: after a restart while the registry is down, the engine asks for both
    const keys = keysOf(key, q, m);
    for (const k of keys) this.cache.set(k, m);
    for (const k of keys)
      await this.opts.store
        ?.put(k, m)
        .catch((err: unknown) => this.log.warn({ err: DfError.from(err) }, 'manifest not stored on disk'));
  }

  /** The newest copy within staleMs: memory, disk (after a restart), or the one `via` kept. */
  private async newestKept(key: string, other?: CachedManifest): Promise<CachedManifest | undefined> {
    const now = this.now();
    const copies = [
      this.cache.get(key, this.staleMs, now),
      await this.opts.store?.get(key, this.staleMs, now).catch(() => undefined),
      other && now - other.storedAt <= this.staleMs ? other : undefined,
    ].filter((m): m is CachedManifest => m !== undefined);
    return copies.sort((a, b) => b.storedAt - a.storedAt)[0];
  }
}
