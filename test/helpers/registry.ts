/**
 * A real `docker-registry` (distribution 2.8) for tests: own port on loopback, own storage, optional
 * Basic (htpasswd, bcrypt) or Bearer (token server in this process, RS256 JWTs) authentication.
 * Needs `docker-registry`, and `htpasswd` (apache2-utils) for basic auth, `openssl` for bearer auth.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createSign, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import {
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freeLoopbackPort } from '../../src/util/free-port.js';
import { runOk } from './cli.js';
import { requireTools, type Requirement } from './require.js';

export type RegistryAuthMode = 'none' | 'basic' | 'bearer';

export interface StartRegistryOptions {
  auth?: RegistryAuthMode;
  username?: string;
  password?: string;
  /**
   * Bearer only: grant pull to requests without credentials (like Docker Hub for public images): every
   * repository, or those listed.
   */
  anonymousPull?: boolean | string[];
  /** Bearer only: which field carries the token in the token server's answer. */
  tokenField?: 'token' | 'access_token' | 'both';
  /** Bearer only: grant authenticated users pull access only (to test refused pushes). */
  pullOnly?: boolean;
  /** Bearer only: token lifetime in seconds. */
  tokenExpiresIn?: number;
}

export interface AccessLogEntry {
  method: string;
  path: string;
  status: number;
}

export interface TestRegistry {
  /** `127.0.0.1:PORT`, as used in image references. */
  host: string;
  /** `http://127.0.0.1:PORT`. */
  url: string;
  rootDir: string;
  auth: RegistryAuthMode;
  username?: string;
  password?: string;
  /** Bearer only: token requests answered so far (any outcome). */
  readonly tokenRequests: number;
  /** Requests the registry has logged so far (its access log is read asynchronously). */
  requestCount(): number;
  requests(): AccessLogEntry[];
  stop(): Promise<void>;
}

/** The tools startRegistry needs for an auth mode; use with describe.skipIf. */
export function requireRegistry(auth: RegistryAuthMode[] = ['none']): Requirement {
  const tools = ['docker-registry'];
  if (auth.includes('basic')) tools.push('htpasswd');
  if (auth.includes('bearer')) tools.push('openssl');
  return requireTools(tools);
}

/** A loopback port that was free a moment ago (src/util/free-port.ts). */
export const freePort = freeLoopbackPort;

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) if (c.pid && c.exitCode === null) process.kill(c.pid, 'SIGKILL');
});

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<TestRegistry> {
  const auth = opts.auth ?? 'none';
  const username = opts.username ?? (auth === 'none' ? undefined : 'tester');
  const password = opts.password ?? (auth === 'none' ? undefined : 'secret-pass');
  const rootDir = mkdtempSync(join(tmpdir(), 'dfnode-registry-'));
  let token: TokenServer | undefined;
  try {
    mkdirSync(join(rootDir, 'data'));
    let authYaml = '';
    if (auth === 'basic') {
      const line = execFileSync('htpasswd', ['-Bbn', username!, password!], { encoding: 'utf8' }).trim();
      writeFileSync(join(rootDir, 'htpasswd'), `${line}\n`);
      authYaml = `auth:\n  htpasswd:\n    realm: dfnode-test\n    path: ${join(rootDir, 'htpasswd')}\n`;
    } else if (auth === 'bearer') {
      token = await startTokenServer(rootDir, { ...opts, username: username!, password: password! });
      authYaml =
        `auth:\n  token:\n    realm: ${token.url}/token\n    service: ${token.service}\n` +
        `    issuer: ${token.issuer}\n    rootcertbundle: ${token.certPath}\n`;
    }

    for (let tries = 0; ; tries++) {
      const port = await freePort();
      const host = `127.0.0.1:${port}`;
      const config =
        `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\n` +
        `storage:\n  filesystem:\n    rootdirectory: ${join(rootDir, 'data')}\n  delete:\n    enabled: true\n` +
        `  maintenance:\n    uploadpurging:\n      enabled: false\n` +
        `http:\n  addr: ${host}\n  secret: ${randomBytes(16).toString('hex')}\n` +
        authYaml;
      const configPath = join(rootDir, 'config.yml');
      writeFileSync(configPath, config);
      const child = spawn('docker-registry', ['serve', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
      live.add(child);
      const log: AccessLogEntry[] = [];
      let stderr = '';
      child.stderr!.setEncoding('utf8').on('data', (d: string) => {
        stderr = (stderr + d).slice(-4000);
      });
      let partial = '';
      child.stdout!.setEncoding('utf8').on('data', (d: string) => {
        const lines = (partial + d).split('\n');
        partial = lines.pop()!;
        for (const l of lines) {
          const m = /"([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3})/.exec(l);
          if (m) log.push({ method: m[1]!, path: m[2]!, status: Number(m[3]) });
        }
      });
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const stop = async (): Promise<void> => {
        if (child.exitCode === null && child.pid) {
          child.kill('SIGTERM');
          const t = setTimeout(() => child.kill('SIGKILL'), 5000);
          await exited;
          clearTimeout(t);
        }
        live.delete(child);
      };
      const ready = await waitReady(`http://${host}/v2/`, exited);
      if (!ready) {
        await stop();
        if (tries < 3 && /address already in use/i.test(stderr)) continue;
        throw new Error(`docker-registry did not start on ${host}: ${stderr.trim() || 'no output'}`);
      }
      const tokenServer = token;
      return {
        host,
        url: `http://${host}`,
        rootDir,
        auth,
        username,
        password,
        get tokenRequests() {
          return tokenServer?.requests ?? 0;
        },
        requestCount: () => log.length,
        requests: () => [...log],
        async stop() {
          await stop();
          await tokenServer?.close();
          rmSync(rootDir, { recursive: true, force: true });
        },
      };
    }
  } catch (err) {
    await token?.close();
    rmSync(rootDir, { recursive: true, force: true });
    throw err;
  }
}

async function waitReady(url: string, exited: Promise<unknown>): Promise<boolean> {
  let dead = false;
  void exited.then(() => (dead = true));
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline && !dead) {
    const status = await new Promise<number>((resolve) => {
      const req = httpRequest(url, { method: 'GET' }, (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', () => resolve(0));
      req.end();
    });
    if (status === 200 || status === 401) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/**
 * Copies the image `source` (a skopeo transport reference, e.g. `oci:DIR:TAG`) into a test registry as
 * `dest` (`HOST/REPO:TAG`, plain HTTP), with `creds` (`user:password`) when the registry needs them.
 */
export async function pushToRegistry(source: string, dest: string, creds?: string): Promise<void> {
  await runOk('skopeo', [
    'copy',
    '--quiet',
    '--dest-tls-verify=false',
    ...(creds ? ['--dest-creds', creds] : []),
    source,
    `docker://${dest}`,
  ]);
}

/**
 * An engine's own token for pulls of `repo`: the registry's challenge, then its token server with the
 * registry's login (the `Authorization` value to send).
 */
export async function engineToken(reg: TestRegistry, repo: string): Promise<string> {
  const ch = await fetch(`${reg.url}/v2/${repo}/manifests/x`);
  const h = ch.headers.get('www-authenticate') ?? '';
  const p = Object.fromEntries([...h.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
  const u = new URL(p.realm!);
  u.searchParams.set('service', p.service!);
  u.searchParams.set('scope', `repository:${repo}:pull`);
  const res = await fetch(u, {
    headers: { authorization: 'Basic ' + Buffer.from(`${reg.username}:${reg.password}`).toString('base64') },
  });
  const j = (await res.json()) as { token?: string; access_token?: string };
  return `Bearer ${j.token ?? j.access_token}`;
}

// ---- bearer token server ----

interface TokenServer {
  url: string;
  service: string;
  issuer: string;
  certPath: string;
  requests: number;
  close(): Promise<void>;
}

function b64url(b: Buffer | string): string {
  return Buffer.from(b).toString('base64url');
}

async function startTokenServer(
  dir: string,
  opts: StartRegistryOptions & { username: string; password: string },
): Promise<TokenServer> {
  const keyPath = join(dir, 'token.key');
  const certPath = join(dir, 'token.crt');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      keyPath,
      '-out',
      certPath,
      '-days',
      '2',
      '-subj',
      '/CN=dfnode-test-token',
    ],
    { stdio: 'ignore' },
  );
  const key = readFileSync(keyPath, 'utf8');
  const certDer = Buffer.from(
    readFileSync(certPath, 'utf8')
      .replace(/-----(BEGIN|END) CERTIFICATE-----/g, '')
      .replace(/\s+/g, ''),
    'base64',
  );
  const service = 'dfnode-test-registry';
  const issuer = 'dfnode-test-issuer';
  const state = { requests: 0 };

  const sign = (sub: string, access: { type: string; name: string; actions: string[] }[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const head = b64url(JSON.stringify({ typ: 'JWT', alg: 'RS256', x5c: [certDer.toString('base64')] }));
    const claims = b64url(
      JSON.stringify({
        iss: issuer,
        sub,
        aud: service,
        exp: now + (opts.tokenExpiresIn ?? 300),
        nbf: now - 10,
        iat: now,
        jti: randomBytes(8).toString('hex'),
        access,
      }),
    );
    const sig = createSign('RSA-SHA256').update(`${head}.${claims}`).sign(key);
    return `${head}.${claims}.${b64url(sig)}`;
  };

  const handler = (req: IncomingMessage, res: ServerResponse): void => {
    state.requests++;
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== '/token' || req.method !== 'GET') {
      res.writeHead(404).end();
      return;
    }
    const authz = req.headers.authorization;
    let user: string | undefined;
    if (authz?.startsWith('Basic ')) {
      const [u, ...p] = Buffer.from(authz.slice(6), 'base64').toString('utf8').split(':');
      if (u !== opts.username || p.join(':') !== opts.password) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"invalid credentials"}');
        return;
      }
      user = u;
    } else if (authz) {
      res.writeHead(401).end();
      return;
    }
    const access: { type: string; name: string; actions: string[] }[] = [];
    for (const scope of url.searchParams.getAll('scope').flatMap((s) => s.split(' '))) {
      const first = scope.indexOf(':');
      const last = scope.lastIndexOf(':');
      if (first < 0 || last <= first) continue;
      const type = scope.slice(0, first);
      const name = scope.slice(first + 1, last);
      let actions = scope.slice(last + 1).split(',');
      const anonymous = Array.isArray(opts.anonymousPull)
        ? opts.anonymousPull.includes(name)
        : opts.anonymousPull === true;
      if (!user) actions = anonymous ? actions.filter((a) => a === 'pull') : [];
      else if (opts.pullOnly) actions = actions.filter((a) => a === 'pull');
      if (actions.length) access.push({ type, name, actions });
    }
    const tok = sign(user ?? '', access);
    const field = opts.tokenField ?? 'both';
    const body: Record<string, unknown> = {
      expires_in: opts.tokenExpiresIn ?? 300,
      issued_at: new Date().toISOString(),
    };
    if (field !== 'access_token') body.token = tok;
    if (field !== 'token') body.access_token = tok;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body));
  };

  const server: Server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    service,
    issuer,
    certPath,
    get requests() {
      return state.requests;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

// ---- a proxy in front of a registry, to inject failures or redirects ----

export interface ProxyDecision {
  /** Answer with this status instead of forwarding. */
  status?: number;
  headers?: Record<string, string>;
  body?: string;
}

export interface TestProxy {
  host: string;
  url: string;
  /** Requests seen, forwarded or not. */
  readonly requests: number;
  stop(): Promise<void>;
}

/**
 * An HTTP proxy on loopback that forwards to `target` (`host:port`) unless `intercept` answers the
 * request itself. The Host header is kept, so the registry's Location headers point back at the proxy.
 */
export async function startProxy(
  target: string,
  intercept?: (req: IncomingMessage, n: number) => ProxyDecision | undefined,
): Promise<TestProxy> {
  const state = { requests: 0 };
  const [thost, tport] = target.split(':');
  const server = createServer((req, res) => {
    const n = ++state.requests;
    const d = intercept?.(req, n);
    if (d?.status) {
      req.resume();
      res.writeHead(d.status, { 'content-type': 'application/json', ...d.headers }).end(d.body ?? '');
      return;
    }
    const up = httpRequest(
      { host: thost, port: Number(tport), method: req.method, path: req.url, headers: req.headers },
      (ures) => {
        res.writeHead(ures.statusCode ?? 502, ures.headers);
        ures.pipe(res);
      },
    );
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    host,
    url: `http://${host}`,
    get requests() {
      return state.requests;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Writes `dir/config.json` the way `docker login host` would; returns its path. */
export function dockerConfigFor(host: string, user: string, pass: string, dir: string): string {
  mkdirSync(dir, { recursive: true });
  const path = join(dir, 'config.json');
  const auth = Buffer.from(`${user}:${pass}`).toString('base64');
  writeFileSync(path, JSON.stringify({ auths: { [host]: { auth } } }, null, 2));
  return path;
}
