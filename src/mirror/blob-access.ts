import { createHash } from 'node:crypto';
import { setNewest } from '../util/bounded-map.js';

/** The credential key of requests without credentials. */
export const ANONYMOUS = '-';

/** The hash an engine's Authorization header is remembered under ('-': no credentials). */
export function credentialKey(authorization: string | undefined): string {
  return authorization ? createHash('sha256').update(authorization).digest('hex') : ANONYMOUS;
}

/**
 * What the registry said an engine may read, so that a blob answered from the cluster or the node's cache
 * is never given to an engine the registry would refuse. A positive answer (a manifest or a blob HEAD the
 * registry answered 200 to, with the engine's own Authorization) is remembered per (credential,
 * registry/repository); the digests a repository's manifests list (and blobs it answered) are remembered
 * per repository, so that a grant for one repository does not open a blob of another through the cache.
 * Both are bounded (least recently used goes first).
 */
export class BlobAccess {
  private readonly grants = new Map<string, number>();
  private readonly known = new Map<string, Set<string>>();

  constructor(
    private readonly maxGrants = 4096,
    private readonly maxRepos = 1024,
    private readonly maxDigestsPerRepo = 4096,
  ) {}

  /**
   * The registry answered `credential` for `repo` (registry/repository) with 200 at `at` (a later answer
   * already remembered stays).
   */
  grant(credential: string, repo: string, at: number): void {
    const k = `${credential}|${repo}`;
    const prev = this.grants.get(k);
    setNewest(this.grants, k, prev !== undefined && prev > at ? prev : at, this.maxGrants);
  }

  /** `digests` belong to `repo` (a manifest of it lists them, or the registry answered them). */
  learn(repo: string, digests: Iterable<string>): void {
    const set = this.known.get(repo) ?? new Set<string>();
    setNewest(this.known, repo, set, this.maxRepos);
    for (const d of digests) {
      set.delete(d);
      set.add(d);
    }
    for (const d of set) {
      if (set.size <= this.maxDigestsPerRepo) break;
      set.delete(d);
    }
  }

  /**
   * Whether `credential` may read `digest` of `repo` without asking the registry: a grant younger than
   * `maxAgeMs` to it or to requests without credentials (what anyone may read: a public repository), and the
   * digest known to belong to the repository.
   */
  allowed(credential: string, repo: string, digest: string, maxAgeMs: number, now: number): boolean {
    const fresh = (c: string) => {
      const at = this.grants.get(`${c}|${repo}`);
      return at !== undefined && now - at <= maxAgeMs;
    };
    if (!fresh(credential) && (credential === ANONYMOUS || !fresh(ANONYMOUS))) return false;
    return this.known.get(repo)?.has(digest) ?? false;
  }
}

/** The digests a manifest or index names (config, layers, child manifests); [] when it is not JSON. */
export function manifestDigests(body: Buffer): string[] {
  let j: unknown;
  try {
    j = JSON.parse(body.toString('utf8'));
  } catch {
    return [];
  }
  const out: string[] = [];
  const take = (d: unknown) => {
    const digest = (d as { digest?: unknown } | null)?.digest;
    if (typeof digest === 'string') out.push(digest);
  };
  const o = j as { config?: unknown; layers?: unknown; manifests?: unknown; blobs?: unknown };
  if (o && typeof o === 'object') {
    take(o.config);
    for (const list of [o.layers, o.manifests, o.blobs]) if (Array.isArray(list)) list.forEach(take);
  }
  return out;
}
