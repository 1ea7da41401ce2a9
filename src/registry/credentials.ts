import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { DfError } from '../errors.js';
import { silentLogger, type Logger } from '../log.js';
import { DOCKER_HUB_REGISTRY } from './reference.js';

/** What a registry login needs. `identityToken` is an OAuth2 refresh token; `registryToken` a ready bearer token. */
export interface Credential {
  username?: string;
  password?: string;
  identityToken?: string;
  registryToken?: string;
}

/** Looks up credentials for a registry host (`host[:port]`). */
export interface CredentialProvider {
  get(host: string, signal?: AbortSignal): Promise<Credential | undefined>;
}

/** The key Docker uses for Docker Hub in config files and credential helpers. */
const DOCKER_HUB_KEY = 'https://index.docker.io/v1/';

/** Reduces a docker config `auths` key (`https://host/v1/`, `host`, `http://host:5000`) to `host[:port]`. */
export function normalizeRegistryKey(key: string): string {
  let k = key.trim().replace(/^[a-z][a-z0-9+.-]*:\/\//i, '');
  const slash = k.indexOf('/');
  if (slash >= 0) k = k.slice(0, slash);
  k = k.toLowerCase();
  if (k === 'docker.io' || k === 'index.docker.io' || k === 'registry-1.docker.io')
    return DOCKER_HUB_REGISTRY;
  return k;
}

interface DockerAuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
  registrytoken?: string;
}

interface DockerConfigFile {
  auths?: Record<string, DockerAuthEntry>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

/** Decodes one `auths` entry; undefined when it holds nothing usable (as written alongside a credsStore). */
function decodeAuthEntry(entry: DockerAuthEntry, where = 'docker config'): Credential | undefined {
  const cred: Credential = {};
  if (entry.auth) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) {
      throw new DfError(
        'CONFIG',
        `${where}: "auth" is not base64 of "user:password"; run docker login again`,
      );
    }
    cred.username = decoded.slice(0, colon);
    cred.password = decoded.slice(colon + 1);
  }
  if (entry.username !== undefined) cred.username = entry.username;
  if (entry.password !== undefined) cred.password = entry.password;
  if (entry.identitytoken) cred.identityToken = entry.identitytoken;
  if (entry.registrytoken) cred.registryToken = entry.registrytoken;
  const empty = !cred.username && !cred.password && !cred.identityToken && !cred.registryToken;
  return empty ? undefined : cred;
}

export interface DockerConfigCredentialsOptions {
  /** Path of config.json; default `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`. */
  path?: string;
  /** Time limit for a `docker-credential-*` helper. */
  helperTimeoutMs?: number;
  logger?: Logger;
}

export function defaultDockerConfigPath(): string {
  return join(process.env.DOCKER_CONFIG || join(homedir(), '.docker'), 'config.json');
}

/**
 * Credentials the way `docker login` stores them: `credHelpers[host]`, then `credsStore`, then `auths`.
 * A missing config file means anonymous access. The file is read on each lookup (lookups are rare:
 * once per registry host and token expiry) so that a `docker login` in between is picked up.
 */
export class DockerConfigCredentials implements CredentialProvider {
  readonly path: string;
  private readonly helperTimeoutMs: number;
  private readonly logger: Logger;

  constructor(opts: DockerConfigCredentialsOptions = {}) {
    this.path = opts.path ?? defaultDockerConfigPath();
    this.helperTimeoutMs = opts.helperTimeoutMs ?? 10_000;
    this.logger = opts.logger ?? silentLogger;
  }

  private async load(): Promise<DockerConfigFile | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw DfError.from(err, `read docker config ${this.path}`);
    }
    try {
      return JSON.parse(text) as DockerConfigFile;
    } catch (err) {
      throw new DfError('CONFIG', `docker config ${this.path} is not valid JSON: fix or remove it`, {
        cause: err,
      });
    }
  }

  async get(host: string, signal?: AbortSignal): Promise<Credential | undefined> {
    const config = await this.load();
    if (!config) return undefined;
    const want = normalizeRegistryKey(host);

    const helperKey = Object.keys(config.credHelpers ?? {}).find((k) => normalizeRegistryKey(k) === want);
    const helper = helperKey !== undefined ? config.credHelpers![helperKey] : config.credsStore;
    if (helper) {
      const serverUrl = want === DOCKER_HUB_REGISTRY ? DOCKER_HUB_KEY : (helperKey ?? want);
      const cred = await runCredentialHelper(helper, serverUrl, this.helperTimeoutMs, signal).catch(
        (err: unknown) => {
          // A configured but missing helper: fall back to `auths`, as docker does for credsStore.
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
            this.logger.warn(
              { helper },
              `docker-credential-${helper} not found in PATH; using "auths" entries`,
            );
            return undefined;
          }
          throw err;
        },
      );
      if (cred) return cred;
    }

    for (const [key, entry] of Object.entries(config.auths ?? {})) {
      if (normalizeRegistryKey(key) !== want) continue;
      const cred = decodeAuthEntry(entry, `docker config ${this.path} entry "${key}"`);
      if (cred) return cred;
    }
    return undefined;
  }
}

/**
 * Runs `docker-credential-<name> get` with the server URL on stdin. Resolves undefined when the helper
 * has no credentials for the server; rejects with code ENOENT when the helper is not installed.
 */
export function runCredentialHelper(
  name: string,
  serverUrl: string,
  timeoutMs = 10_000,
  signal?: AbortSignal,
): Promise<Credential | undefined> {
  return new Promise((resolve, reject) => {
    const child = execFile(
      `docker-credential-${name}`,
      ['get'],
      { timeout: timeoutMs, maxBuffer: 1 << 20, signal, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (err) {
          const e = err as NodeJS.ErrnoException & { killed?: boolean };
          if (e.code === 'ENOENT') return reject(e);
          const out = `${stdout}${stderr}`.trim();
          if (/credentials not found/i.test(out)) return resolve(undefined);
          if (e.name === 'AbortError') return reject(DfError.aborted(`docker-credential-${name} aborted`));
          if (e.killed) {
            return reject(
              DfError.timeout(`docker-credential-${name} get did not answer within ${timeoutMs} ms`),
            );
          }
          return reject(
            new DfError(
              'UNAUTHORIZED',
              `docker-credential-${name} get failed for ${serverUrl}: ${out || e.message}`,
              {
                cause: err,
              },
            ),
          );
        }
        try {
          const parsed = JSON.parse(stdout) as { Username?: string; Secret?: string };
          if (!parsed.Secret) return resolve(undefined);
          // By docker convention, the user name "<token>" marks an identity (refresh) token.
          if (parsed.Username === '<token>') return resolve({ identityToken: parsed.Secret });
          return resolve({ username: parsed.Username ?? '', password: parsed.Secret });
        } catch (err2) {
          reject(
            new DfError('CONFIG', `docker-credential-${name} printed something that is not JSON`, {
              cause: err2,
            }),
          );
        }
      },
    );
    child.stdin?.end(serverUrl);
  });
}

/** Fixed credentials (`--creds user:pass`), for all hosts or only the listed ones. */
export class StaticCredentials implements CredentialProvider {
  private readonly hosts?: Set<string>;

  constructor(
    private readonly cred: Credential,
    hosts?: string[],
  ) {
    if (hosts) this.hosts = new Set(hosts.map(normalizeRegistryKey));
  }

  /** Parses `user:password` as given on a command line. */
  static fromString(s: string, hosts?: string[]): StaticCredentials {
    const colon = s.indexOf(':');
    if (colon <= 0) throw DfError.invalidArgument('credentials must be given as user:password');
    return new StaticCredentials({ username: s.slice(0, colon), password: s.slice(colon + 1) }, hosts);
  }

  async get(host: string): Promise<Credential | undefined> {
    if (this.hosts && !this.hosts.has(normalizeRegistryKey(host))) return undefined;
    return this.cred;
  }
}

/** The first provider that knows the host wins (e.g. `--creds` before the docker config file). */
export function chainCredentials(...providers: (CredentialProvider | undefined)[]): CredentialProvider {
  const list = providers.filter((p): p is CredentialProvider => p !== undefined);
  return {
    async get(host, signal) {
      for (const p of list) {
        const c = await p.get(host, signal);
        if (c) return c;
      }
      return undefined;
    },
  };
}
