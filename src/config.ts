import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { z } from 'zod';
import { DfError } from './errors.js';

/**
 * The one configuration schema. Defaults live here; a config file (JSON), environment variables
 * (DFNODE_<SECTION>_<KEY>, e.g. DFNODE_CONVERT_BLOCK_SIZE) and command-line flags override them in that order.
 */
const sizeSchema = z.union([z.number().int().nonnegative(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return v;
  const n = parseSize(v);
  if (n === undefined) {
    ctx.addIssue({ code: 'custom', message: `not a size: ${v} (use e.g. 65536, 64k, 4M, 10G)` });
    return z.NEVER;
  }
  return n;
});

const configSchema = z.strictObject({
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  registry: z
    .strictObject({
      /** Talk plain HTTP to every registry (tests, local registries). */
      plainHttp: z.boolean().default(false),
      /** Hosts (host[:port]) spoken to over plain HTTP. */
      insecure: z.array(z.string()).default([]),
      /** Docker config file with registry credentials. */
      dockerConfig: z.string().default(defaultDockerConfig()),
      /** Per-request timeout. */
      timeoutMs: z.number().int().positive().default(30_000),
      /** Retries on 5xx, 429 and network errors, with exponential backoff. */
      retries: z.number().int().nonnegative().default(4),
      /** Chunk size for blob uploads; 0 uploads monolithically. */
      uploadChunkSize: sizeSchema.default(0),
    })
    .prefault({}),
  convert: z
    .strictObject({
      /** Uncompressed block size of DFB blobs. */
      blockSize: sizeSchema
        .default(64 * 1024)
        .refine((n) => n >= 16 * 1024 && n <= 4 * 1024 * 1024 && (n & (n - 1)) === 0, {
          message: 'block size must be a power of two between 16 KiB and 4 MiB',
        }),
      /** Compression worker threads; 0 = number of CPUs. */
      workers: z.number().int().nonnegative().default(0),
      /** Work and incremental-conversion cache directory. */
      workDir: z.string().default(join(cacheHome(), 'dfnode', 'convert')),
      /** Platforms to convert from an image index (os/arch[/variant]); empty = all. */
      platforms: z.array(z.string()).default([]),
    })
    .prefault({}),
  cache: z
    .strictObject({
      /** Per-blob sparse cache files and bitmaps. */
      dir: z.string().default('/var/lib/dfnode/cache'),
      /** Evict unused blobs when the cache grows past this... */
      highWatermark: sizeSchema.default(20 * 1024 ** 3),
      /** ...until it is below this. */
      lowWatermark: sizeSchema.default(16 * 1024 ** 3),
      /** Decompressed-block memory cache (LRU). */
      memoryBytes: sizeSchema.default(64 * 1024 ** 2),
      /**
       * Reads served in JavaScript check each block they take from the local cache file against its SHA-256
       * (bit rot) and refetch a block that fails. Blocks are always verified before they enter the cache and
       * the complete file against the blob digest, whatever this says.
       */
      verifyCachedReads: z.boolean().default(true),
      /**
       * The same check for reads the native addon serves in C from the cache file (the fast path): each block
       * is hashed the first time a mount serves it, and again after it is rewritten. Off by default: it costs
       * about a quarter of the cached read throughput right after a mount (bench/fuse-read, warm-backing).
       */
      verifyDirectReads: z.boolean().default(false),
    })
    .prefault({}),
  fetch: z
    .strictObject({
      /** A read blocked on the network fails with EIO after this long. */
      readTimeoutMs: z.number().int().positive().default(30_000),
      /** One range request. */
      requestTimeoutMs: z.number().int().positive().default(10_000),
      retries: z.number().int().nonnegative().default(3),
      /** Largest range request for prefetch and background fill. */
      maxRunBytes: sizeSchema.default(4 * 1024 ** 2),
      /** Background fill rate limit in bytes/s; 0 = unlimited. */
      fillRate: sizeSchema.default(0),
      /** Start filling the whole layer after its first read. */
      backgroundFill: z.boolean().default(true),
      /** Files read front to back fetch growing windows ahead of the reader (fetch/read-ahead.ts). */
      readAhead: z.boolean().default(true),
      /** Fetch a layer's prefetch ranges (DFB 1.1, `dfconvert --prefetch-list`) as soon as it is opened. */
      prefetch: z.boolean().default(true),
    })
    .prefault({}),
  snapshotter: z
    .strictObject({
      /** Serve containerd's snapshots.v1 service from `dfnode run` (proxy plugin). */
      enabled: z.boolean().default(true),
      /** Snapshot directories and metadata.json. */
      root: z.string().default('/var/lib/dfnode/snapshotter'),
      /** Unix socket containerd's proxy_plugins entry points at. */
      socket: z.string().default('/run/dfnode/snapshotter.sock'),
    })
    .prefault({}),
  node: z
    .strictObject({
      /** Mount points, mount records and the lock of the running daemon. */
      stateDir: z.string().default('/var/lib/dfnode/state'),
      /** Prometheus metrics endpoint of `dfnode run` / `dfnode mount` (host:port; empty = off). */
      metricsAddress: z.string().default('127.0.0.1:9877'),
      /**
       * containerd's socket, where per-container metrics look up the container behind a blocked read (image,
       * Kubernetes labels); empty: no lookups (blocked time is then only counted in total).
       */
      containerdAddress: z.string().default('/run/containerd/containerd.sock'),
      /** FUSE binding: the libfuse3 addon in native/ when built (auto), or fuse-native (libfuse 2). */
      fuseBinding: z.enum(['auto', 'native', 'fuse-native']).default('auto'),
      /**
       * `dfnode run` leaves the FUSE mounts and the cache to a separate long-lived process (`dfnode fuse-manager`)
       * so that restarting dfnode does not break running containers; false serves them in-process.
       */
      fuseManager: z.boolean().default(true),
      /**
       * Unix socket (mode 0600) on which `dfnode run` takes commands from the CLI (`dfnode pull`), so that the
       * CLI starts without loading gRPC. Empty: control.sock in stateDir; "off": none.
       */
      controlSocket: z.string().default(''),
    })
    .prefault({}),
  p2p: z
    .strictObject({
      /** Seeds (host:port of each seed's block server; its tracker listens on the next port). Empty: no P2P. */
      seeds: z.array(z.string()).default([]),
      /** Shared secret of the cluster: peers and seeds answer only requests carrying it. */
      clusterToken: z.string().default(''),
      /** ...or read from this file (first line), e.g. a Kubernetes secret. */
      clusterTokenFile: z.string().default(''),
      /** This host's block server (nodes and seeds). */
      listen: z.string().default('0.0.0.0:7700'),
      /** host:port peers reach this host's block server at; default: the listen address (with the host's name for 0.0.0.0). */
      advertise: z.string().default(''),
      /** Topology label (zone, rack, subnet): the tracker prefers holders with the same label. */
      zone: z.string().default(''),
      /** Host-wide upload and download limits for peer, seed and registry traffic, bytes/s; 0 = unlimited. */
      uploadRate: sizeSchema.default(0),
      downloadRate: sizeSchema.default(0),
      /**
       * Background-fill runs this node uploads to peers at once; more are refused at once (429) and the
       * askers take other holders (a container's reads are always served). 0 = no limit. A slot is taken
       * until the run has nearly left the socket (docs/p2p.md, upload slots).
       */
      uploadSlots: z.number().int().nonnegative().default(4),
      /**
       * TCP connections this host's block server (a seed's: its HTTP tracker too) keeps open at once, in all
       * (default 4096 on a node, 65536 on a seed) and from one address; more are closed on arrival (counted,
       * warned about once per address). A node keeps at most 18 connections to a seed (16 for blocks, 2 for
       * the tracker), fewer to a peer: raise the per-address bound when many nodes reach a seed through one
       * NAT address. Bounds the memory a flood of connections, which needs no token, can take (~9 KiB each).
       */
      maxConnections: z.number().int().positive().optional(),
      maxConnectionsPerHost: z.number().int().positive().default(1024),
      /** One range request to a peer; then the next holder, the seed or the registry. */
      peerTimeoutMs: z.number().int().positive().default(2000),
      /** One range request to a seed (which may go to the registry for it). */
      seedTimeoutMs: z.number().int().positive().default(8000),
      /** One tracker call (a timeout is a busy seed: the call is retried; a refused one is a seed down). */
      trackerTimeoutMs: z.number().int().positive().default(5000),
      /** Announce new blocks (deltas) this often. */
      announceIntervalMs: z.number().int().positive().default(1000),
      /** A peer that fails is excluded for isolationBaseMs, doubling per further failure up to isolationMaxMs. */
      isolationBaseMs: z.number().int().positive().default(5000),
      isolationMaxMs: z.number().int().positive().default(300_000),
      /** Seed: the tracker forgets peers silent for this long. */
      peerTtlMs: z.number().int().positive().default(30_000),
      /**
       * A node: the layers of an image preheated through the running daemon (`dfnode preheat` over its
       * control socket, or the FUSE manager's) stay open this long after the preheat ends: their blocks are
       * served to peers and stay announced to the tracker, so hosts that warm the same image at the same time
       * (a rollout) keep taking them from this one. 0: released at once (served again only when mounted).
       * Released early, oldest first, when the cache is above its high watermark with every blob in use.
       */
      preheatServeMs: z.number().int().nonnegative().default(600_000),
      /** Seed: fetch the whole blob from the registry after the first request (full copies). */
      seedFill: z.boolean().default(true),
      /**
       * Seed: while its own registry link is full (1 MiB of registry requests in flight), a node's planned
       * fill run for blocks the seed does not have is handed back to the node, which fetches it from the
       * registry itself; the tracker holds those blocks for that node, so the registry still sends each
       * block to the cluster once, and the seed's copy takes them from the node. The registry's link is then
       * used in full when it is wider than the seed's. false: the seed fetches everything itself.
       */
      handBack: z.boolean().default(true),
      /**
       * Seed: registry range requests nobody is blocked on (its fill, nodes' planned fill runs) pipelined
       * at once (HTTP/1.1, about two per connection), so that the next answer follows the last without a
       * round trip. Reads nodes wait on never queue. 0 (the default): off. It made no difference in bench/p2p
       * (bench/README.md), some proxies mishandle pipelining, and aborting a queued request also fails the
       * answer ahead of it in undici 7 (the fetcher retries it): opt in, e.g. 8.
       */
      seedRegistryPipeline: z.number().int().min(0).max(32).default(0),
      /**
       * Seed: the registries (`host[:port]`, as in image references; `*` = any) it fetches blobs from for
       * nodes, with its own credentials. Empty (the default): it fetches from none and answers no new blob.
       */
      seedRegistries: z.array(z.string()).default([]),
      /**
       * Seed: the origins of raw files (`dfnode get`) it fetches for nodes, as URL prefixes
       * (`https://host[:port][/path]`; `*` = any). Empty (the default): none, nodes fetch from the origin.
       */
      seedOrigins: z.array(z.string()).default([]),
      /** Seed: a blob no node asked for in this long is closed (its cache may then be evicted). */
      seedIdleMs: z.number().int().positive().default(600_000),
      /**
       * Mutual TLS for all peer, seed and tracker traffic, on top of the cluster token: PEM files of this
       * host's certificate (chain), its key and the cluster CA that signed every member's certificate.
       * All three or none (off). Peers are dialled by address, so only the chain is checked, not the name.
       */
      tls: z
        .strictObject({
          cert: z.string().default(''),
          key: z.string().default(''),
          ca: z.string().default(''),
        })
        .prefault({})
        .superRefine((t, ctx) => {
          const missing = (['cert', 'key', 'ca'] as const).filter((k) => !t[k]);
          if (missing.length === 1 || missing.length === 2)
            ctx.addIssue({
              code: 'custom',
              message: `set cert, key and ca together (missing ${missing.join(', ')}), or none to turn TLS off`,
            });
        }),
    })
    .prefault({}),
  /**
   * The registry mirror (docs/mirror.md): an OCI pull endpoint any engine can use as a mirror, served by
   * `dfnode run` and `dfnode seed`. The engine's credentials pass through to the registry.
   */
  mirror: z
    .strictObject({
      /** host:port to listen on; empty (the default) or `off`: no mirror. Keep it on loopback on nodes. */
      listen: z.string().default(''),
      /**
       * Registries (`host[:port]`) the mirror fetches from; empty: any. Required when `listen` is not a
       * loopback address (otherwise anyone who reaches the port could make this host fetch any URL).
       */
      registries: z.array(z.string()).default([]),
      /** Upstream for requests that name no registry (Docker's `registry-mirrors` covers Docker Hub only). */
      defaultRegistry: z.string().default('registry-1.docker.io'),
      /** A manifest is answered from memory for this long before the registry is asked again. */
      manifestTtlMs: z.number().int().nonnegative().default(5_000),
      /** While the registry cannot be reached, manifests up to this old are still answered. */
      staleManifestMs: z.number().int().nonnegative().default(3_600_000),
      /**
       * Manifests the mirror fetched are also kept on disk (cache dir, `mirror-manifests/`) up to this many
       * bytes in all (least recently used go first), so that a restarted node or seed answers them while the
       * registry is down; 0: memory only.
       */
      manifestStoreBytes: sizeSchema.default(64 * 1024 ** 2),
      /**
       * Where the mirror runs next to the node's cache and P2P tier, a blob is answered from them only after
       * the registry said (blob HEAD with the engine's credentials) that the engine may read it; a yes is
       * remembered per credential and repository this long.
       */
      accessTtlMs: z.number().int().nonnegative().default(300_000),
      /**
       * A pull that comes without credentials and that the registry answers 401 is sent again with an
       * anonymous token from the registry's token server (what the engine would fetch itself), so that
       * engines pulling public images stay anonymous and share one cached manifest and access for the
       * cluster; the engine gets the registry's challenge when no anonymous token will do.
       */
      anonymousTokens: z.boolean().default(true),
    })
    .prefault({}),
});

export type Config = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;

function parseSize(s: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$/i.exec(s);
  if (!m) return undefined;
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase()]!;
  return Math.round(parseFloat(m[1]!) * mult);
}

function cacheHome(): string {
  return process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
}

function defaultDockerConfig(): string {
  return join(process.env.DOCKER_CONFIG || join(homedir(), '.docker'), 'config.json');
}

type Json = Record<string, unknown>;

function isObject(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function deepMerge(base: Json, over: Json): Json {
  const out: Json = { ...base };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) continue;
    out[k] = isObject(v) && isObject(out[k]) ? deepMerge(out[k] as Json, v) : v;
  }
  return out;
}

const camelToSnake = (s: string) => s.replace(/[A-Z]/g, (c) => '_' + c).toUpperCase();

/** Reads DFNODE_* variables for every leaf of the schema; arrays are comma-separated. */
function configFromEnv(env: NodeJS.ProcessEnv = process.env): Json {
  const out: Json = {};
  const walk = (shape: Record<string, z.ZodType>, path: string[], target: Json) => {
    for (const [key, type] of Object.entries(shape)) {
      const inner = unwrap(type);
      if (inner instanceof z.ZodObject) {
        const sub: Json = {};
        walk(inner.shape as Record<string, z.ZodType>, [...path, key], sub);
        if (Object.keys(sub).length) target[key] = sub;
        continue;
      }
      const name = 'DFNODE_' + [...path, key].map(camelToSnake).join('_');
      const raw = env[name];
      if (raw === undefined || raw === '') continue;
      if (inner instanceof z.ZodBoolean) target[key] = /^(1|true|yes|on)$/i.test(raw);
      else if (inner instanceof z.ZodNumber) target[key] = Number(raw);
      else if (inner instanceof z.ZodArray)
        target[key] = raw
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean);
      else target[key] = raw;
    }
  };
  walk(configSchema.shape as unknown as Record<string, z.ZodType>, [], out);
  return out;
}

function unwrap(t: z.ZodType): z.ZodType {
  let cur: any = t;
  for (let i = 0; i < 10; i++) {
    const def = cur?._zod?.def;
    if (!def) break;
    if (
      def.type === 'default' ||
      def.type === 'prefault' ||
      def.type === 'optional' ||
      def.type === 'nullable'
    )
      cur = def.innerType;
    else if (def.type === 'pipe') cur = def.in;
    else break;
  }
  return cur as z.ZodType;
}

export interface LoadConfigOptions {
  /** JSON config file; missing file is an error only when given explicitly. */
  file?: string;
  env?: NodeJS.ProcessEnv;
  /** Values from command-line flags, same shape as the schema (partial). */
  flags?: Json;
}

/** The JSON object of a config file ({} without a file). */
function readConfigFile(file: string | undefined): Json {
  let fromFile: Json = {};
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new DfError('CONFIG', `cannot read config file ${file}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    try {
      const parsed = JSON.parse(text);
      if (!isObject(parsed)) throw new Error('top level must be an object');
      fromFile = parsed;
    } catch (err) {
      throw new DfError('CONFIG', `config file ${file} is not valid JSON: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  return fromFile;
}

/**
 * Whether the config file or the environment gives `path` (e.g. ['node', 'metricsAddress']) a value, rather than
 * leaving it to the schema's default: for a command whose own default differs (a seed's metrics are off).
 */
export function configGives(path: string[], opts: Omit<LoadConfigOptions, 'flags'> = {}): boolean {
  const env = opts.env ?? process.env;
  return hasPath(readConfigFile(opts.file ?? env.DFNODE_CONFIG), path) || hasPath(configFromEnv(env), path);
}

export function loadConfig(opts: LoadConfigOptions = {}): Config {
  const env = opts.env ?? process.env;
  const file = opts.file ?? env.DFNODE_CONFIG;
  const fromFile = readConfigFile(file);
  const merged = deepMerge(deepMerge(fromFile, configFromEnv(env)), opts.flags ?? {});
  const res = configSchema.safeParse(merged);
  if (!res.success) {
    const where = (path: PropertyKey[]): string => {
      // Environment variables exist only for known keys: an unknown one came from the file or the flags.
      if (file && hasPath(fromFile, path)) return ` in config file ${file}`;
      if (hasPath(opts.flags ?? {}, path)) return ' from the command line';
      return '';
    };
    const msg = res.error.issues
      .map((i) => {
        if (i.code === 'unrecognized_keys') {
          const known = Object.keys(shapeAt(i.path) ?? {});
          return i.keys
            .map((k) => {
              const path = [...i.path, k];
              return `unknown key ${path.join('.')}${where(path)}${known.length ? ` (known at ${i.path.join('.') || 'top level'}: ${known.join(', ')})` : ''}`;
            })
            .join('; ');
        }
        return `${i.path.join('.') || '(root)'}: ${i.message}`;
      })
      .join('; ');
    throw new DfError('CONFIG', `invalid configuration: ${msg}`);
  }
  return res.data;
}

function hasPath(obj: Json, path: PropertyKey[]): boolean {
  let cur: unknown = obj;
  for (const k of path) {
    if (!isObject(cur) || !(String(k) in cur)) return false;
    cur = cur[String(k)];
  }
  return true;
}

/** The keys the schema knows at `path` (an object level). */
function shapeAt(path: PropertyKey[]): Record<string, unknown> | undefined {
  let cur: z.ZodType = configSchema;
  for (const k of path) {
    const inner = unwrap(cur);
    if (!(inner instanceof z.ZodObject)) return undefined;
    const next = (inner.shape as Record<string, z.ZodType>)[String(k)];
    if (!next) return undefined;
    cur = next;
  }
  const inner = unwrap(cur);
  return inner instanceof z.ZodObject ? (inner.shape as Record<string, unknown>) : undefined;
}
