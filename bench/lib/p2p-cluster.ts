// A P2P cluster on one machine for the netns tests and bench/p2p: a NetnsTopology with a registry host, seed
// hosts (seed, seed2, ...), node hosts and any extra hosts; a converted synthetic image pushed into the
// registry from inside its namespace (over its loopback, so the push never crosses the shaped link);
// `dfnode seed`, `dfnode preheat` and the fault-test helpers (a corrupt peer, tracker lookups, metrics scrapes)
// run inside their hosts (the root namespace has no route to them) and are stopped by PID.
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fileDigest } from './file-digest.js';
import { NetnsTopology, type NetnsHost } from './netns-topology.js';
import { NsProc } from './ns-proc.js';
import { NsRegistry } from './ns-registry.js';
import { trackerAddress } from '../../src/p2p/rendezvous.js';
import { writeSyntheticImage, type SyntheticImageOptions } from './synthetic-image.js';

/** The repository root (this file runs from bench/lib as TypeScript and from dist/bench/lib compiled). */
export function repoRoot(): string {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, 'package.json'))) {
    const up = dirname(d);
    if (up === d) throw new Error('package.json not found above ' + fileURLToPath(import.meta.url));
    d = up;
  }
  return d;
}

/** The benches' `--link-queue` values (TopologyOptions.smallFirst). */
export const LINK_QUEUE_HELP =
  '  --link-queue: small-first (default; ACKs and requests, TCP packets under 512 bytes, ahead of bulk data,\n' +
  "    as a host's fq_codel serves sparse flows), ack-priority (only pure ACKs, under 128 bytes, ahead) or\n" +
  "    fifo (htb's default leaf: 1000 packets, 600 ms at 20 Mbit/s, everything behind bulk data)\n";

/** `--link-queue` → TopologyOptions.smallFirst; undefined for an unknown value. */
export function linkQueue(v: string): 0 | 128 | 512 | undefined {
  return ({ 'small-first': 512, 'ack-priority': 128, fifo: 0 } as const)[v as 'fifo'];
}

/** The compiled command line `name` (dist/src/cli), or the bundle that ships (dist/bundle, `bundled`). */
export function cli(name: 'dfnode' | 'dfconvert', bundled = false): string {
  const p = bundled
    ? join(repoRoot(), 'dist', 'bundle', `${name}.js`)
    : join(repoRoot(), 'dist', 'src', 'cli', `${name}.js`);
  if (!existsSync(p)) throw new Error(`${p} is missing: run "npm run build" first`);
  return p;
}

/** A compiled child-process script of bench/lib (run inside a namespace). */
function helper(name: 'p2p-liar' | 'tracker-lookup'): string {
  const p = join(repoRoot(), 'dist', 'bench', 'lib', `${name}.js`);
  if (!existsSync(p)) throw new Error(`${p} is missing: run "npm run build" first`);
  return p;
}

export { NsProc };

/** Whether the data file of every blob of `layers` in a dfnode cache dir hashes to its digest. */
export async function cacheVerifies(
  cacheDir: string,
  layers: readonly { digest: string }[],
): Promise<boolean> {
  for (const l of layers) {
    const f = join(cacheDir, 'blobs', 'sha256', l.digest.slice(7), 'data');
    if (!existsSync(f) || (await fileDigest(f)) !== l.digest) return false;
  }
  return true;
}

export interface ClusterOptions {
  nodes: number;
  /** Mbit/s of each node's, seed's and extra host's link. */
  hostMbit: number;
  /** Mbit/s of the registry host's link. */
  registryMbit: number;
  /** A generated image, or an existing OCI layout (`{ layout: { dir, tag } }`, e.g. a test fixture). */
  image: SyntheticImageOptions | { layout: { dir: string; tag: string } };
  /** Push the image as it is (`REGIP:5000/syn:1`, for the registry mirror) instead of converting it. */
  plain?: boolean;
  /**
   * A second, different image converted as `syn:warm-dfb` (P2pCluster.warmRef): daemons that have preheated
   * it once are warm (their code compiled, their connections up) before the image that is timed.
   */
  warmImage?: SyntheticImageOptions;
  /** Scratch directory (caches, registry storage, image layout); the caller removes it. */
  workDir: string;
  token?: string;
  /** Seed hosts: `seed`, then `seed2`, `seed3`, ... Default 1. */
  seeds?: number;
  /** More hosts on the same links (e.g. `liar`, `outsider`), after the nodes. */
  extraHosts?: string[];
  /** Link buffer in ms (see TopologyOptions.queueMs); default: the veth's own FIFO. */
  queueMs?: number;
  /** Small packets (ACKs; with 512, requests too) ahead of bulk data in each link (TopologyOptions.smallFirst). */
  smallFirst?: 0 | 128 | 512;
  /** Node.js flags for every dfnode process (e.g. `--cpu-prof`, `--cpu-prof-dir=DIR`). */
  nodeFlags?: string[];
  log?: (s: string) => void;
}

export interface PreheatOptions {
  /** Seeds the nodes are given (`--seeds`); default every seed host. */
  seeds?: NetnsHost[];
  env?: NodeJS.ProcessEnv;
  /** More `dfnode preheat` flags (e.g. `--metrics-address 127.0.0.1:9100`). */
  args?: string[];
  /** Keep serving peers after the result (default true). */
  serve?: boolean;
}

/** A `dfnode preheat` started by startPreheat. */
export interface PreheatRun {
  host: NetnsHost;
  proc: NsProc;
  cacheDir: string;
  /** Resolves when the node prints its result; rejects if it exits first. */
  result(timeoutMs?: number): Promise<PreheatResult>;
}

/** A `dfnode seed` started by startSeed. */
export type SeedProc = NsProc & { host: NetnsHost; address: string; cacheDir: string };

/** A tracker's answer (tracker-lookup.js); when it refused or failed, no holders and the error's code. */
export interface LookupAnswer {
  units: number;
  /** Units each holder has, and units the seed is sending it (not announced yet). */
  holders: { peer_id: string; address: string; present: number; pending: number }[];
  error?: string;
  message?: string;
}

export interface PreheatResult {
  host: string;
  /** ms from spawning the process until it printed its result. */
  ms: number;
  bytes: number;
  bySource: Record<string, number>;
  /** What the node's P2P fill planner did (runs from peers and seed, waits, deferrals). */
  fill?: Record<string, number>;
  cacheDir: string;
}

const P2P_PORT = 7700;

export class P2pCluster {
  private procs: NsProc[] = [];
  private runs = 0;

  private constructor(
    readonly topo: NetnsTopology,
    readonly registry: NsRegistry,
    readonly opts: ClusterOptions,
    /** Image reference as nodes use it (`REGIP:5000/syn:1-dfb`; `REGIP:5000/syn:1` with `plain`). */
    readonly ref: string,
    /** The image's layer(s) in the registry (converted, or as they are with `plain`): digest and size. */
    readonly layers: { digest: string; size: number }[],
    /** Size of the image's config blob. */
    readonly configBytes = 0,
    /** The warm-up image (ClusterOptions.warmImage), when one was made. */
    readonly warmRef?: string,
  ) {}

  get token(): string {
    return this.opts.token ?? 'netns-cluster-token';
  }

  get nodes(): NetnsHost[] {
    return this.topo.hosts.filter((h) => h.name.startsWith('node'));
  }

  get seedHost(): NetnsHost {
    return this.topo.host('seed');
  }

  /** seed, seed2, ... in order. */
  get seedHosts(): NetnsHost[] {
    return this.topo.hosts.filter((h) => /^seed\d*$/.test(h.name));
  }

  /** The block server address of the seed or node on `host` (a seed's tracker listens on the next port). */
  p2pAddress(host: NetnsHost): string {
    return `${host.ip}:${P2P_PORT}`;
  }

  /** Environment that makes a `dfnode run` on `host` a member of this cluster (its seeds, listen address, token). */
  memberEnv(host: NetnsHost, seeds: NetnsHost[] = this.seedHosts): NodeJS.ProcessEnv {
    return {
      DFNODE_P2P_SEEDS: seeds.map((h) => this.p2pAddress(h)).join(','),
      DFNODE_P2P_LISTEN: this.p2pAddress(host),
      DFNODE_P2P_CLUSTER_TOKEN: this.token,
    };
  }

  /** Builds the topology, starts the registry, generates, converts and pushes the image. Cleans up on failure. */
  static async create(opts: ClusterOptions): Promise<P2pCluster> {
    const log = opts.log ?? (() => undefined);
    const topo = await NetnsTopology.create({
      prefix: 'dfp2p',
      queueMs: opts.queueMs,
      smallFirst: opts.smallFirst,
      hosts: [
        { name: 'registry', mbit: opts.registryMbit },
        ...Array.from({ length: opts.seeds ?? 1 }, (_, i) => ({
          name: i ? `seed${i + 1}` : 'seed',
          mbit: opts.hostMbit,
        })),
        ...Array.from({ length: opts.nodes }, (_, i) => ({ name: `node${i + 1}`, mbit: opts.hostMbit })),
        ...(opts.extraHosts ?? []).map((name) => ({ name, mbit: opts.hostMbit })),
      ],
    });
    let registry: NsRegistry | undefined;
    try {
      const reg = topo.host('registry');
      registry = await NsRegistry.start(reg, join(opts.workDir, 'registry'));
      log(`topology: hub ${topo.hub}, ${topo.hosts.length} hosts; registry ${registry.host}`);
      let img: { dir: string; tag: string };
      if ('layout' in opts.image) img = opts.image.layout;
      else {
        const syn = await writeSyntheticImage(join(opts.workDir, 'image'), opts.image);
        log(`synthetic image: layer tar ${syn.layerSize} B`);
        img = syn;
      }
      const tag = opts.plain ? '1' : '1-dfb';
      if (opts.plain) {
        log(`pushing ${img.dir}:${img.tag} into the registry as it is`);
        await reg.exec('skopeo', [
          'copy',
          '--quiet',
          '--dest-tls-verify=false',
          `oci:${img.dir}:${img.tag}`,
          `docker://${registry.localHost}/syn:${tag}`,
        ]);
      } else {
        log(`converting ${img.dir}:${img.tag} into the registry`);
        await convertInto(reg, registry, opts.workDir, img, tag);
      }
      let warmRef: string | undefined;
      if (opts.warmImage) {
        const warm = await writeSyntheticImage(join(opts.workDir, 'warm-image'), opts.warmImage);
        log(`warm-up image: layer tar ${warm.layerSize} B, converted as syn:warm-dfb`);
        await convertInto(reg, registry, opts.workDir, warm, 'warm-dfb');
        warmRef = `${registry.host}/syn:warm-dfb`;
      }
      const man = await reg.exec('curl', [
        '-sf',
        '-H',
        'accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json',
        `http://${registry.localHost}/v2/syn/manifests/${tag}`,
      ]);
      const manifest = JSON.parse(man.stdout) as {
        config: { size: number };
        layers: { digest: string; size: number }[];
      };
      const layers = manifest.layers.map((l) => ({
        digest: l.digest,
        size: l.size,
      }));
      registry.resetCounts();
      return new P2pCluster(
        topo,
        registry,
        opts,
        `${registry.host}/syn:${tag}`,
        layers,
        manifest.config.size,
        warmRef,
      );
    } catch (err) {
      await registry?.stop();
      await topo.destroy();
      throw err;
    }
  }

  get imageBytes(): number {
    return this.layers.reduce((a, l) => a + l.size, 0);
  }

  /**
   * Starts `dfnode seed` (fresh cache) in `opts.host` (default the seed host) on seedAddress(host); resolves
   * when it serves.
   */
  async startSeed(
    extraEnv: NodeJS.ProcessEnv = {},
    opts: { host?: NetnsHost; args?: string[] } = {},
  ): Promise<SeedProc> {
    const host = opts.host ?? this.seedHost;
    const n = ++this.runs;
    const dir = join(this.opts.workDir, `seed-${n}`);
    const address = this.p2pAddress(host);
    const p = NsProc.spawn(
      host.name,
      host,
      process.execPath,
      [
        ...(this.opts.nodeFlags ?? []),
        cli('dfnode', true),
        'seed',
        '--plain-http',
        '--cache-dir',
        join(dir, 'cache'),
        '--state-dir',
        join(dir, 'state'),
        '--p2p-listen',
        address,
        ...(opts.args ?? []),
      ],
      {
        DFNODE_LOG_LEVEL: 'warn',
        DFNODE_P2P_CLUSTER_TOKEN: this.token,
        // the cluster's own registry only: any, in a test network
        DFNODE_P2P_SEED_REGISTRIES: '*',
        ...extraEnv,
      },
    );
    this.procs.push(p);
    await p.waitLine(/^seed serving /, 60_000);
    return Object.assign(p, { host, address, cacheDir: join(dir, 'cache') });
  }

  /**
   * `dfnode preheat --json` of the image on each of `hosts` at once (with `--serve` unless opts.serve is
   * false: they keep serving peers until stopAll). Returns at once: each run's result() waits for its line.
   */
  startPreheat(hosts: NetnsHost[], opts: PreheatOptions = {}): PreheatRun[] {
    const n = ++this.runs;
    const seeds = (opts.seeds ?? this.seedHosts).map((h) => this.p2pAddress(h)).join(',');
    return hosts.map((h) => {
      const cacheDir = join(this.opts.workDir, `run-${n}`, h.name, 'cache');
      const proc = NsProc.spawn(
        `preheat ${h.name}`,
        h,
        process.execPath,
        [
          ...(this.opts.nodeFlags ?? []),
          cli('dfnode', true),
          'preheat',
          '--plain-http',
          ...(opts.serve === false ? [] : ['--serve']),
          '--json',
          '--cache-dir',
          cacheDir,
          '--state-dir',
          join(this.opts.workDir, `run-${n}`, h.name, 'state'),
          '--seeds',
          seeds,
          '--p2p-listen',
          `${h.ip}:${P2P_PORT}`,
          ...(opts.args ?? []),
          this.ref,
        ],
        { DFNODE_LOG_LEVEL: 'warn', DFNODE_P2P_CLUSTER_TOKEN: this.token, ...opts.env },
      );
      this.procs.push(proc);
      const result = async (timeoutMs?: number): Promise<PreheatResult> => {
        const l = await proc.waitLine(/^\{.*\}$/, timeoutMs);
        const j = JSON.parse(l.line) as {
          bytes: number;
          bySource: Record<string, number>;
          fill?: Record<string, number>;
        };
        return { host: h.name, ms: l.at, bytes: j.bytes, bySource: j.bySource, fill: j.fill, cacheDir };
      };
      return { host: h, proc, cacheDir, result };
    });
  }

  /**
   * `dfnode preheat --serve --json` of the image on each of `hosts` at once (they keep serving peers until
   * stopAll); resolves with each node's result when every node has printed it.
   */
  async preheat(hosts: NetnsHost[], extraEnv: NodeJS.ProcessEnv = {}): Promise<PreheatResult[]> {
    return Promise.all(this.startPreheat(hosts, { env: extraEnv }).map((r) => r.result()));
  }

  /**
   * A cluster member that serves corrupt blocks (bench/lib/p2p-liar.js) in `host`, announcing every unit of
   * every layer to the trackers of `seeds` (default every seed host) once they know the blob. Its stdout has
   * `announced ...` and `hit CLIENT_IP OFFSET LENGTH` lines; liarHits() counts the latter.
   */
  async startLiar(host: NetnsHost, seeds: NetnsHost[] = this.seedHosts): Promise<NsProc> {
    const trackers = seeds.map((h) => trackerAddress(this.p2pAddress(h))).join(',');
    const p = NsProc.spawn(
      `liar ${host.name}`,
      host,
      process.execPath,
      [helper('p2p-liar'), `${host.ip}:${P2P_PORT}`, trackers, this.layers.map((l) => l.digest).join(',')],
      { DFNODE_P2P_CLUSTER_TOKEN: this.token },
    );
    this.procs.push(p);
    await p.waitLine(/^liar serving /, 60_000);
    return p;
  }

  /** Block requests a liar answered so far, by client IP. */
  static liarHits(liar: NsProc): Map<string, number> {
    const m = new Map<string, number>();
    for (const { line } of liar.lines) {
      const x = /^hit (\S+) /.exec(line);
      if (x) m.set(x[1]!, (m.get(x[1]!) ?? 0) + 1);
    }
    return m;
  }

  /** One lookup of `blob` (default the first layer) at the tracker of the seed on `seed`, run in `from`. */
  async lookup(
    from: NetnsHost,
    seed: NetnsHost,
    opts: { blob?: string; token?: string } = {},
  ): Promise<LookupAnswer> {
    const r = await from.exec(
      process.execPath,
      [helper('tracker-lookup'), trackerAddress(this.p2pAddress(seed)), opts.blob ?? this.layers[0]!.digest],
      { env: { ...process.env, DFNODE_P2P_CLUSTER_TOKEN: opts.token ?? this.token } },
    );
    return JSON.parse(r.stdout.trim()) as LookupAnswer;
  }

  /** The Prometheus text of a metrics endpoint on `host`'s loopback (e.g. `--metrics-address 127.0.0.1:PORT`). */
  async scrape(host: NetnsHost, port: number): Promise<string> {
    return (await host.exec('curl', ['-sf', '--max-time', '20', `http://127.0.0.1:${port}/metrics`])).stdout;
  }

  /** Every host of `hosts` downloads each layer blob straight from the registry with curl, at once. */
  async directDownload(hosts: NetnsHost[]): Promise<{ host: string; ms: number; bytes: number }[]> {
    return Promise.all(
      hosts.map(async (h) => {
        const t0 = Date.now();
        let bytes = 0;
        for (const l of this.layers) {
          const r = await h.exec('curl', [
            '-sf',
            '-o',
            '/dev/null',
            '-w',
            '%{size_download}',
            `http://${this.registry.host}/v2/syn/blobs/${l.digest}`,
          ]);
          bytes += Number(r.stdout);
        }
        return { host: h.name, ms: Date.now() - t0, bytes };
      }),
    );
  }

  /** Each layer blob as a file in the registry's storage (e.g. to seed it over BitTorrent). */
  layerFiles(): { digest: string; size: number; path: string }[] {
    return this.layers.map((l) => ({ ...l, path: this.registry.blobPath(l.digest) }));
  }

  /** Whether every layer in a node's cache hashes to its digest. */
  cacheVerifies(cacheDir: string): Promise<boolean> {
    return cacheVerifies(cacheDir, this.layers);
  }

  /** Bytes allocated on disk for the layers in a cache dir (their data files are sparse until complete). */
  async cachedBytes(cacheDir: string): Promise<number> {
    let n = 0;
    for (const l of this.layers) {
      const st = await stat(join(cacheDir, 'blobs', 'sha256', l.digest.slice(7), 'data')).catch(
        () => undefined,
      );
      n += st ? Math.min(st.blocks * 512, l.size) : 0;
    }
    return n;
  }

  /** Stops every seed, node and liar process started so far (by PID). */
  async stopAll(): Promise<void> {
    const ps = this.procs.splice(0);
    await Promise.all(ps.map((p) => p.stop().catch(() => undefined)));
  }

  /** Stops everything, then deletes the namespaces. */
  async destroy(): Promise<void> {
    await this.stopAll();
    await this.registry.stop().catch(() => undefined);
    await this.topo.destroy();
  }
}

/** Converts the OCI layout `img` with dfconvert (run on the registry host) into the registry as `syn:TAG`. */
async function convertInto(
  reg: NetnsHost,
  registry: NsRegistry,
  workDir: string,
  img: { dir: string; tag: string },
  tag: string,
): Promise<void> {
  await reg.exec(process.execPath, [
    cli('dfconvert'),
    '--plain-http',
    '--quiet',
    '--work-dir',
    join(workDir, 'dfwork'),
    `oci:${img.dir}:${img.tag}`,
    `${registry.localHost}/syn:${tag}`,
  ]);
}
