import type { Dispatcher } from 'undici';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { readBody } from '../registry/http-body.js';
import { MAX_TOKEN_ANSWER, parseTokenResponse } from '../registry/token-response.js';
import { parseWwwAuthenticate } from '../registry/www-authenticate.js';
import { setNewest } from '../util/bounded-map.js';
import { bound } from '../util/timers.js';

export interface AnonymousTokensOptions {
  dispatcher: Dispatcher;
  timeoutMs: number;
  userAgent: string;
  logger?: Logger;
  now?: () => number;
  /** Tokens kept (least recently used go first). */
  maxTokens?: number;
  /**
   * After the registry or its token server refused anonymous access to a scope (or the token server did not
   * answer), not asked again for this long.
   */
  refusedMs?: number;
}

interface Held {
  token: string;
  expiresAt: number;
}

/** What a 401's challenge asks for, when a request without credentials can meet it with an anonymous token. */
export interface AnonymousChallenge {
  /** `registry|repository:NAME:pull`: tokens and refusals are kept under it. */
  key: string;
  url: URL;
}

/** `repository:NAME:pull` for a mirror path `/v2/NAME/manifests/...` or `/v2/NAME/blobs/...`. */
export function pullScopeOf(path: string): string | undefined {
  const m = /^\/v2\/(.+)\/(?:manifests|blobs)\/[^/]+$/.exec(path.split('?')[0]!);
  return m ? `repository:${m[1]}:pull` : undefined;
}

/** Tokens and refusals are kept per registry and scope. */
const tokenKey = (registry: string, scope: string) => `${registry.toLowerCase()}|${scope}`;

const LINK_LOCAL = /^(169\.254\.|\[fe[89ab][0-9a-f]:)/i;

/**
 * Whether the mirror may ask `realm` for an anonymous token on behalf of a pull from `registry`: an https
 * realm (never a link-local address: cloud metadata services live there), or a plain-HTTP one on the
 * registry's own host. The token request carries no credentials, but its answer goes back to the registry
 * as a header, so a registry must not be able to point the mirror at an internal HTTP service.
 */
export function realmAllowed(realm: URL, registry: string): boolean {
  if (LINK_LOCAL.test(realm.hostname)) return false;
  if (realm.protocol === 'https:') return true;
  if (realm.protocol !== 'http:') return false;
  let host: string;
  try {
    host = new URL(`http://${registry}`).hostname;
  } catch {
    return false;
  }
  return realm.hostname.toLowerCase() === host.toLowerCase();
}

/**
 * Bearer tokens fetched **without credentials** from a registry's token server, for engine requests that came
 * without credentials: what the engine itself would do on the registry's 401 (Docker Hub, GHCR and others
 * give anonymous pull tokens for public repositories). The mirror then answers the engine 200 instead of the
 * challenge, so that engines pulling public images stay anonymous: their manifests and access are kept under
 * one key for every engine and node (one registry request per manifest for the cluster, and a copy for a
 * registry outage that every node can use), where each engine's own token would be a credential of its own.
 * Only `repository:NAME:pull` scopes are asked for; a scope the registry refuses anonymously (a private
 * repository) is remembered for refusedMs and the engine gets the registry's own challenge, as without this.
 */
export class AnonymousTokens {
  private readonly tokens = new Map<string, Held>();
  private readonly refused = new Map<string, number>();
  private readonly pending = new Map<string, Promise<string | undefined>>();
  private readonly log: Logger;
  private readonly now: () => number;
  /** Token requests sent, answers used, scopes refused. */
  readonly counters = { fetched: 0, used: 0, refused: 0 };

  constructor(private readonly opts: AnonymousTokensOptions) {
    this.log = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
  }

  /** A token already held for a pull of `path` from `registry` (sent up front: no 401 round trip). */
  held(registry: string, path: string): string | undefined {
    const scope = pullScopeOf(path);
    if (!scope) return undefined;
    const key = tokenKey(registry, scope);
    const t = this.tokens.get(key);
    if (!t) return undefined;
    if (t.expiresAt <= this.now()) {
      this.tokens.delete(key);
      return undefined;
    }
    return t.token;
  }

  /**
   * The anonymous challenge in a 401's `WWW-Authenticate` for a pull of `path`: a Bearer challenge with a
   * realm this mirror may ask and the repository's pull scope; undefined otherwise (Basic, no scope, another
   * scope than the path's, a realm not allowed).
   */
  challenge(
    registry: string,
    path: string,
    header: string | string[] | undefined,
  ): AnonymousChallenge | undefined {
    const scope = pullScopeOf(path);
    if (!scope) return undefined;
    const c = parseWwwAuthenticate(header).find((x) => x.scheme === 'bearer' && x.params.realm);
    if (!c) return undefined;
    // the registry names the scope it wants; only this repository's pull is ever asked for
    const asked = (c.params.scope ?? '').split(' ').filter(Boolean);
    const repoOf = (s: string) => s.slice(0, s.lastIndexOf(':'));
    if (!asked.some((s) => repoOf(s) === repoOf(scope) && s.slice(s.lastIndexOf(':') + 1).includes('pull')))
      return undefined;
    let url: URL;
    try {
      url = new URL(c.params.realm!);
    } catch {
      return undefined;
    }
    if (!realmAllowed(url, registry)) {
      this.log.debug({ registry, realm: c.params.realm }, 'anonymous token: realm not asked');
      return undefined;
    }
    if (c.params.service) url.searchParams.set('service', c.params.service);
    url.searchParams.set('scope', scope);
    return { key: tokenKey(registry, scope), url };
  }

  /**
   * An anonymous token for the challenge (one request for everyone asking at once); undefined when the token
   * server refuses, fails or was refused for this scope within refusedMs.
   */
  async token(ch: AnonymousChallenge, signal?: AbortSignal): Promise<string | undefined> {
    const until = this.refused.get(ch.key);
    if (until !== undefined) {
      if (until > this.now()) return undefined;
      this.refused.delete(ch.key);
    }
    let p = this.pending.get(ch.key);
    if (!p) {
      p = this.fetch(ch).finally(() => this.pending.delete(ch.key));
      this.pending.set(ch.key, p);
    }
    const tok = await bound(p, { signal, what: 'anonymous token' });
    if (tok) this.counters.used++;
    return tok;
  }

  /** The registry refused a request made with this scope's anonymous token: not asked again for refusedMs. */
  refuse(key: string): void {
    this.tokens.delete(key);
    this.counters.refused++;
    setNewest(this.refused, key, this.now() + (this.opts.refusedMs ?? 60_000), this.opts.maxTokens ?? 1024);
  }

  /** The registry refused a token sent up front (expired early, revoked): fetched again next time. */
  drop(registry: string, path: string): void {
    const scope = pullScopeOf(path);
    if (scope) this.tokens.delete(tokenKey(registry, scope));
  }

  private async fetch(ch: AnonymousChallenge): Promise<string | undefined> {
    const { url } = ch;
    const started = this.now();
    this.counters.fetched++;
    let text: string;
    try {
      const res = await this.opts.dispatcher.request({
        origin: url.origin,
        path: url.pathname + url.search,
        method: 'GET',
        headers: { 'user-agent': this.opts.userAgent, accept: 'application/json' },
        signal: AbortSignal.timeout(this.opts.timeoutMs),
      });
      const body = await readBody(res.body, MAX_TOKEN_ANSWER, `token answer from ${url.host}`);
      if (res.statusCode !== 200) {
        // 401/403: no anonymous access; anything else (5xx, 429): not now either
        this.refuse(ch.key);
        this.log.debug({ realm: url.origin, status: res.statusCode }, 'anonymous token refused');
        return undefined;
      }
      text = body.toString('utf8');
    } catch (err) {
      // a token server that does not answer is not waited for again by every request for a minute: the
      // engines get the challenge and ask it themselves
      this.refuse(ch.key);
      this.log.debug({ err: DfError.from(err), realm: url.origin }, 'anonymous token not fetched');
      return undefined;
    }
    let answer;
    try {
      answer = parseTokenResponse(text, url.host, ch.key);
    } catch (err) {
      this.refuse(ch.key);
      this.log.warn({ err: DfError.from(err) }, 'anonymous token answer refused');
      return undefined;
    }
    const lifetime = answer.lifetimeS * 1000;
    const expiresAt = started + Math.max(lifetime - Math.min(30_000, lifetime / 10), 1000);
    setNewest(this.tokens, ch.key, { token: answer.token, expiresAt }, this.opts.maxTokens ?? 1024);
    return answer.token;
  }
}
