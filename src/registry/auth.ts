import type { Dispatcher } from 'undici';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import type { Credential, CredentialProvider } from './credentials.js';
import { readBody } from './http-body.js';
import { parseWwwAuthenticate, type AuthChallenge } from './www-authenticate.js';

/** Largest token server answer read (real ones are a few KiB). */
export const MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024;

/** Access to one repository: `pull` or `pull,push`. */
export interface RepoScope {
  repository: string;
  actions: 'pull' | 'pull,push';
}

function scopeString(s: RepoScope): string {
  return `repository:${s.repository}:${s.actions}`;
}

interface HostAuth {
  scheme: 'basic' | 'bearer';
  params: Record<string, string>;
}

interface CachedToken {
  token: string;
  /** ms since epoch after which the token is not used any more. */
  expiresAt: number;
}

export interface RegistryAuthOptions {
  dispatcher: Dispatcher;
  credentials?: CredentialProvider;
  timeoutMs: number;
  userAgent: string;
  logger?: Logger;
  now?: () => number;
}

/** Adds `scope` parameters one by one (a space-joined scope is not understood by every token server). */
function tokenUrl(realm: string, service: string | undefined, scopes: string[]): URL {
  let url: URL;
  try {
    url = new URL(realm);
  } catch {
    throw new DfError('REGISTRY', `registry sent an invalid token realm "${realm}"`);
  }
  if (service) url.searchParams.set('service', service);
  for (const s of scopes) url.searchParams.append('scope', s);
  return url;
}

export function authFailedMessage(host: string, repo: string): string {
  return `authentication to ${host} failed for ${repo}: check credentials (docker login ${host} or --creds)`;
}

/**
 * Registry authentication state: which scheme each host asked for, and bearer tokens cached per
 * host and scope set until they expire. Concurrent requests for the same token share one fetch.
 */
export class RegistryAuth {
  private readonly hosts = new Map<string, HostAuth>();
  private readonly tokens = new Map<string, CachedToken>();
  private readonly pending = new Map<string, Promise<CachedToken>>();
  private readonly creds = new Map<string, Promise<Credential | undefined>>();
  private readonly logger: Logger;
  private readonly now: () => number;
  /** Token requests sent (for tests and metrics). */
  tokenRequests = 0;

  constructor(private readonly opts: RegistryAuthOptions) {
    this.logger = opts.logger ?? silentLogger;
    this.now = opts.now ?? Date.now;
  }

  /** Whether the host has asked for authentication before (so requests carry it up front). */
  knows(host: string): boolean {
    return this.hosts.has(host);
  }

  /**
   * The Authorization header for a request to `host` with the given scopes, from what the host asked
   * for earlier; undefined for hosts that have not asked (anonymous first).
   */
  async authorization(host: string, scopes: RepoScope[], signal?: AbortSignal): Promise<string | undefined> {
    const h = this.hosts.get(host);
    if (!h) return undefined;
    const repo = scopes[0]?.repository ?? '';
    if (h.scheme === 'basic') {
      const c = await this.credential(host, signal);
      if (!c || c.username === undefined || c.password === undefined) {
        throw new DfError(
          'UNAUTHORIZED',
          `${host} requires a login for ${repo} and no credentials were found: docker login ${host} or --creds`,
          { details: { host, repository: repo } },
        );
      }
      return `Basic ${Buffer.from(`${c.username}:${c.password}`).toString('base64')}`;
    }
    const tok = await this.token(host, h, scopes, signal);
    return `Bearer ${tok.token}`;
  }

  /**
   * Records the challenge of a 401 answer. Returns false when the answer carries no challenge that
   * this client can meet.
   */
  onChallenge(host: string, header: string | string[] | undefined, scopes: RepoScope[]): boolean {
    const challenges = parseWwwAuthenticate(header);
    const pick =
      challenges.find((c) => c.scheme === 'bearer' && c.params.realm) ??
      challenges.find((c) => c.scheme === 'basic');
    if (!pick) return false;
    const prev = this.hosts.get(host);
    this.hosts.set(host, { scheme: pick.scheme as 'basic' | 'bearer', params: pick.params });
    // A token that was just refused is dropped, so that the retry fetches a fresh one.
    if (prev?.scheme === 'bearer') this.tokens.delete(this.tokenKey(host, scopes));
    return true;
  }

  /** Lets go of a token (e.g. after the registry refused it). */
  invalidate(host: string, scopes: RepoScope[]): void {
    this.tokens.delete(this.tokenKey(host, scopes));
  }

  /** Credentials for a host (looked up once per host). */
  credential(host: string, signal?: AbortSignal): Promise<Credential | undefined> {
    if (!this.opts.credentials) return Promise.resolve(undefined);
    let p = this.creds.get(host);
    if (!p) {
      p = this.opts.credentials.get(host, signal);
      this.creds.set(host, p);
      p.catch(() => this.creds.delete(host));
    }
    return p;
  }

  private tokenKey(host: string, scopes: RepoScope[]): string {
    return `${host}|${scopes.map(scopeString).sort().join(' ')}`;
  }

  private async token(
    host: string,
    h: HostAuth,
    scopes: RepoScope[],
    signal?: AbortSignal,
  ): Promise<CachedToken> {
    const key = this.tokenKey(host, scopes);
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt > this.now()) return cached;
    let p = this.pending.get(key);
    if (!p) {
      p = this.fetchToken(host, h, scopes, signal).finally(() => this.pending.delete(key));
      this.pending.set(key, p);
    }
    const tok = await p;
    this.tokens.set(key, tok);
    return tok;
  }

  private async fetchToken(
    host: string,
    h: HostAuth,
    scopes: RepoScope[],
    signal?: AbortSignal,
  ): Promise<CachedToken> {
    const repo = scopes[0]?.repository ?? '';
    const cred = await this.credential(host, signal);
    if (cred?.registryToken) return { token: cred.registryToken, expiresAt: Number.MAX_SAFE_INTEGER };
    const realm = h.params.realm;
    if (!realm) throw new DfError('REGISTRY', `${host} asked for a bearer token without naming a realm`);
    const wanted = scopes.map(scopeString);
    // The registry may name the scope it wants (e.g. for a mount source); ask for it too.
    const challengeScope = h.params.scope;
    if (challengeScope)
      for (const s of challengeScope.split(' ')) if (s && !wanted.includes(s)) wanted.push(s);
    // GET carries service and scopes in the query; the OAuth2 POST carries them in the form.
    const url = tokenUrl(
      realm,
      cred?.identityToken ? undefined : h.params.service,
      cred?.identityToken ? [] : wanted,
    );

    const headers: Record<string, string> = { 'user-agent': this.opts.userAgent, accept: 'application/json' };
    let method: 'GET' | 'POST' = 'GET';
    let body: string | undefined;
    if (cred?.identityToken) {
      // OAuth2 refresh-token grant, as docker does with an identity token.
      method = 'POST';
      headers['content-type'] = 'application/x-www-form-urlencoded';
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: cred.identityToken });
      form.set('client_id', 'dfnode');
      if (h.params.service) form.set('service', h.params.service);
      if (wanted.length) form.set('scope', wanted.join(' '));
      body = form.toString();
    } else if (cred?.username !== undefined && cred.password !== undefined) {
      headers.authorization = `Basic ${Buffer.from(`${cred.username}:${cred.password}`).toString('base64')}`;
    }

    const timeout = AbortSignal.timeout(this.opts.timeoutMs);
    const sig = signal ? AbortSignal.any([signal, timeout]) : timeout;
    this.tokenRequests++;
    const started = this.now();
    let res: Dispatcher.ResponseData;
    try {
      res = await this.opts.dispatcher.request({
        origin: url.origin,
        path: `${url.pathname}${url.search}`,
        method,
        headers,
        body,
        signal: sig,
      });
    } catch (err) {
      if (signal?.aborted) throw DfError.aborted(`token request to ${url.host} aborted`, { cause: err });
      if (timeout.aborted)
        throw DfError.timeout(`token request to ${url.host} timed out after ${this.opts.timeoutMs} ms`);
      const e = DfError.from(err, `token request to ${url.host} for ${host}`);
      throw e.code === 'INTERNAL' ? new DfError('NETWORK', e.message, { cause: err }) : e;
    }
    let text = '';
    try {
      const what = `the answer of token server ${url.host}`;
      text = (await readBody(res.body, MAX_TOKEN_RESPONSE_BYTES, what)).toString('utf8');
    } catch (err) {
      // the body of a refusal only adds detail; a token answer must be read whole
      if (res.statusCode === 200) throw DfError.from(err, `read the answer of token server ${url.host}`);
    }
    if (res.statusCode === 401 || res.statusCode === 403) {
      throw new DfError('UNAUTHORIZED', authFailedMessage(host, repo), {
        details: { host, repository: repo, status: res.statusCode, tokenRealm: realm },
      });
    }
    if (res.statusCode !== 200) {
      throw new DfError(
        'REGISTRY',
        `token server ${url.host} answered ${res.statusCode} for ${host}/${repo}: ${text.slice(0, 200)}`,
        {
          details: {
            host,
            status: res.statusCode,
            retryable: res.statusCode >= 500 || res.statusCode === 429,
          },
        },
      );
    }
    let parsed: { token?: string; access_token?: string; expires_in?: number };
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      throw new DfError('REGISTRY', `token server ${url.host} sent an answer that is not JSON`, {
        cause: err,
      });
    }
    const token = parsed.token || parsed.access_token;
    if (!token) throw new DfError('REGISTRY', `token server ${url.host} sent no token for ${host}/${repo}`);
    // Docker's default lifetime is 60 s when none is given; keep a margin for clock and transit.
    const lifetime =
      (typeof parsed.expires_in === 'number' && parsed.expires_in > 0 ? parsed.expires_in : 60) * 1000;
    this.logger.debug({ host, scopes: wanted }, 'registry token obtained');
    return { token, expiresAt: started + Math.max(lifetime - Math.min(30_000, lifetime / 10), 1000) };
  }
}

export type { AuthChallenge };
