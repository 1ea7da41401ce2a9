// A P2P cluster on one machine for the netns test and bench/p2p: a NetnsTopology with a registry host, one
// seed host and node hosts; a converted synthetic image pushed into the registry from inside its namespace
// (over its loopback, so the push never crosses the shaped link); `dfnode seed` and `dfnode preheat`
// processes run inside their hosts and are stopped by PID.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NetnsTopology, type NetnsHost } from './netns-topology.js';
import { NsProc } from './ns-proc.js';
import { NsRegistry } from './ns-registry.js';
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

export function cli(name: 'dfnode' | 'dfconvert'): string {
  const p = join(repoRoot(), 'dist', 'src', 'cli', `${name}.js`);
  if (!existsSync(p)) throw new Error(`${p} is missing: run "npm run build" first`);
  return p;
}

export { NsProc };

export interface ClusterOptions {
  nodes: number;
  /** Mbit/s of each node's and the seed's link. */
  hostMbit: number;
  /** Mbit/s of the registry host's link. */
  registryMbit: number;
  image: SyntheticImageOptions;
  /** Scratch directory (caches, registry storage, image layout); the caller removes it. */
  workDir: string;
  token?: string;
  log?: (s: string) => void;
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

export const P2P_PORT = 7700;

export class P2pCluster {
  private procs: NsProc[] = [];
  private runs = 0;

  private constructor(
    readonly topo: NetnsTopology,
    readonly registry: NsRegistry,
    readonly opts: ClusterOptions,
    /** Image reference as nodes use it (`REGIP:5000/syn:1-dfb`). */
    readonly ref: string,
    /** The converted layer(s): digest and size. */
    readonly layers: { digest: string; size: number }[],
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

  /** Builds the topology, starts the registry, generates, converts and pushes the image. Cleans up on failure. */
  static async create(opts: ClusterOptions): Promise<P2pCluster> {
    const log = opts.log ?? (() => undefined);
    const topo = await NetnsTopology.create({
      prefix: 'dfp2p',
      hosts: [
        { name: 'registry', mbit: opts.registryMbit },
        { name: 'seed', mbit: opts.hostMbit },
        ...Array.from({ length: opts.nodes }, (_, i) => ({ name: `node${i + 1}`, mbit: opts.hostMbit })),
      ],
    });
    let registry: NsRegistry | undefined;
    try {
      const reg = topo.host('registry');
      registry = await NsRegistry.start(reg, join(opts.workDir, 'registry'));
      log(`topology: hub ${topo.hub}, ${topo.hosts.length} hosts; registry ${registry.host}`);
      const img = await writeSyntheticImage(join(opts.workDir, 'image'), opts.image);
      log(`synthetic image: layer tar ${img.layerSize} B; converting into the registry`);
      const localRef = `${registry.localHost}/syn:1-dfb`;
      await reg.exec(process.execPath, [
        cli('dfconvert'),
        '--plain-http',
        '--quiet',
        '--work-dir',
        join(opts.workDir, 'dfwork'),
        `oci:${img.dir}:${img.tag}`,
        localRef,
      ]);
      const man = await reg.exec('curl', [
        '-sf',
        '-H',
        'accept: application/vnd.oci.image.manifest.v1+json',
        `http://${registry.localHost}/v2/syn/manifests/1-dfb`,
      ]);
      const layers = (JSON.parse(man.stdout) as { layers: { digest: string; size: number }[] }).layers.map(
        (l) => ({
          digest: l.digest,
          size: l.size,
        }),
      );
      registry.resetCounts();
      return new P2pCluster(topo, registry, opts, `${registry.host}/syn:1-dfb`, layers);
    } catch (err) {
      await registry?.stop();
      await topo.destroy();
      throw err;
    }
  }

  get imageBytes(): number {
    return this.layers.reduce((a, l) => a + l.size, 0);
  }

  /** Starts `dfnode seed` (fresh cache) in the seed host; resolves when it serves. */
  async startSeed(extraEnv: NodeJS.ProcessEnv = {}): Promise<NsProc> {
    const n = ++this.runs;
    const dir = join(this.opts.workDir, `seed-${n}`);
    const p = NsProc.spawn(
      'seed',
      this.seedHost,
      process.execPath,
      [
        cli('dfnode'),
        'seed',
        '--plain-http',
        '--cache-dir',
        join(dir, 'cache'),
        '--state-dir',
        join(dir, 'state'),
        '--p2p-listen',
        `${this.seedHost.ip}:${P2P_PORT}`,
      ],
      { DFNODE_LOG_LEVEL: 'warn', DFNODE_P2P_CLUSTER_TOKEN: this.token, ...extraEnv },
    );
    this.procs.push(p);
    await p.waitLine(/^seed serving /, 30_000);
    return p;
  }

  /**
   * `dfnode preheat --serve --json` of the image on each of `hosts` at once (they keep serving peers until
   * stopAll); resolves with each node's result when every node has printed it.
   */
  async preheat(hosts: NetnsHost[], extraEnv: NodeJS.ProcessEnv = {}): Promise<PreheatResult[]> {
    const n = ++this.runs;
    const started = hosts.map((h) => {
      const cacheDir = join(this.opts.workDir, `run-${n}`, h.name, 'cache');
      const p = NsProc.spawn(
        `preheat ${h.name}`,
        h,
        process.execPath,
        [
          cli('dfnode'),
          'preheat',
          '--plain-http',
          '--serve',
          '--json',
          '--cache-dir',
          cacheDir,
          '--state-dir',
          join(this.opts.workDir, `run-${n}`, h.name, 'state'),
          '--seeds',
          `${this.seedHost.ip}:${P2P_PORT}`,
          '--p2p-listen',
          `${h.ip}:${P2P_PORT}`,
          this.ref,
        ],
        { DFNODE_LOG_LEVEL: 'warn', DFNODE_P2P_CLUSTER_TOKEN: this.token, ...extraEnv },
      );
      this.procs.push(p);
      return { h, p, cacheDir };
    });
    return Promise.all(
      started.map(async ({ h, p, cacheDir }) => {
        const l = await p.waitLine(/^\{.*\}$/);
        const j = JSON.parse(l.line) as {
          bytes: number;
          bySource: Record<string, number>;
          fill?: Record<string, number>;
        };
        return { host: h.name, ms: l.at, bytes: j.bytes, bySource: j.bySource, fill: j.fill, cacheDir };
      }),
    );
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

  /** Whether every layer in a node's cache hashes to its digest. */
  async cacheVerifies(cacheDir: string): Promise<boolean> {
    for (const l of this.layers) {
      const f = join(cacheDir, 'blobs', 'sha256', l.digest.slice(7), 'data');
      if (!existsSync(f)) return false;
      const h = createHash('sha256');
      for await (const b of createReadStream(f)) h.update(b as Buffer);
      if ('sha256:' + h.digest('hex') !== l.digest) return false;
    }
    return true;
  }

  /** Stops every seed and node process started so far (by PID). */
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
