// BitTorrent in a NetnsTopology, the baseline of bench/p2p: the layer blobs as one torrent (mktorrent),
// opentracker in a host of its own, one aria2c seeder in the registry host seeding the registry's own blob files
// (hard links into its storage), and aria2c leechers in node hosts started at the same instant, each timed from
// spawn to its completion hook. Every process runs inside its host's namespace and is stopped by PID.
import { chmod, copyFile, link, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  announceUrl,
  aria2Args,
  COMPLETE_HOOK,
  mktorrentArgs,
  opentrackerArgs,
  parseInfoHash,
  parseScrape,
  parseUploadLength,
  RPC_PORT,
  scrapeUrl,
  TELL_ACTIVE,
} from './aria2.js';
import { fileDigest } from './file-digest.js';
import { processCpu, run } from './measure.js';
import type { NetnsHost } from './netns-topology.js';
import { NsProc } from './ns-proc.js';

export interface BtSwarmOptions {
  /** Host of opentracker. */
  tracker: NetnsHost;
  /** Host of the aria2c seeder (the registry host: what it uploads is registry egress). */
  seeder: NetnsHost;
  /** The content: each file is in the torrent under its digest's hex and checked against it after download. */
  files: { digest: string; path: string }[];
  /** 256 KiB or 1 MiB. */
  pieceBytes: number;
  /** Scratch directory (content links, torrent, tracker chroot, downloads); the caller removes it. */
  workDir: string;
  /** Leechers exit when complete instead of seeding until stopAll. */
  exitWhenDone?: boolean;
}

/** An aria2c leecher started by startLeechers. */
export interface BtLeecher {
  host: NetnsHost;
  proc: NsProc;
  /** ms from spawn until the completion hook ran. */
  result(timeoutMs?: number): Promise<{ host: string; ms: number }>;
  /** Whether every downloaded file hashes to its digest (call once the leecher is done). */
  verified(): Promise<boolean>;
  /** CPU seconds the leecher used so far (NaN once it has exited). */
  cpuS(): number;
}

/** The torrent's name: its files are `layers/HEX`. */
const NAME = 'layers';

export class BtSwarm {
  private procs: NsProc[] = [];
  private seeder?: NsProc;
  private runs = 0;

  private constructor(
    readonly opts: BtSwarmOptions,
    private readonly dir: string,
    readonly torrent: string,
    readonly infoHash: string,
  ) {}

  /** Links the content, makes the torrent, the tracker's whitelist and the leechers' completion hook. */
  static async create(opts: BtSwarmOptions): Promise<BtSwarm> {
    const dir = join(opts.workDir, 'bt');
    const content = join(dir, 'seed', NAME);
    await mkdir(content, { recursive: true });
    for (const f of opts.files) {
      const to = join(content, f.digest.replace(/^sha256:/, ''));
      await link(f.path, to).catch(() => copyFile(f.path, to));
    }
    const torrent = join(dir, `${NAME}.torrent`);
    await run('mktorrent', mktorrentArgs(content, torrent, announceUrl(opts.tracker.ip), opts.pieceBytes));
    const infoHash = parseInfoHash((await run('aria2c', ['--show-files', torrent])).stdout);
    await writeFile(join(dir, 'complete.sh'), COMPLETE_HOOK, { mode: 0o755 });
    // opentracker (Debian builds it whitelist-only) chroots into this directory and drops root
    const chroot = join(dir, 'tracker');
    await mkdir(chroot);
    await chmod(chroot, 0o755);
    await writeFile(join(chroot, 'whitelist'), infoHash + '\n', { mode: 0o644 });
    return new BtSwarm(opts, dir, torrent, infoHash);
  }

  /** Starts a fresh opentracker and the seeder; resolves when the tracker lists the seeder. */
  async startSeeding(timeoutMs = 60_000): Promise<void> {
    const { tracker, seeder } = this.opts;
    const ot = NsProc.spawn(
      'opentracker',
      tracker,
      'opentracker',
      opentrackerArgs(tracker.ip, join(this.dir, 'tracker'), 'whitelist'),
    );
    this.procs.push(ot);
    const deadline = Date.now() + timeoutMs;
    // the seeder's first announce must find the tracker listening
    while (!(await this.scrape())) await this.pause(ot, deadline);
    this.seeder = NsProc.spawn(
      'aria2c seeder',
      seeder,
      'aria2c',
      aria2Args({
        torrent: this.torrent,
        dir: join(this.dir, 'seed'),
        ip: seeder.ip,
        role: 'seeder',
        watchPid: process.pid,
      }),
    );
    this.procs.push(this.seeder);
    while (!((await this.scrape())?.complete ?? 0)) await this.pause(this.seeder, deadline);
  }

  /** The tracker's scrape answer for the torrent (asked inside the tracker's host); undefined until it answers. */
  private async scrape(): Promise<{ complete: number; incomplete: number } | undefined> {
    const r = await this.opts.tracker
      .exec('curl', ['-sf', '--max-time', '5', scrapeUrl(this.opts.tracker.ip, this.infoHash)])
      .catch(() => undefined);
    if (!r) return undefined;
    return parseScrape(r.stdout) ?? { complete: 0, incomplete: 0 };
  }

  private async pause(p: NsProc, deadline: number): Promise<void> {
    if (!p.running || Date.now() > deadline)
      throw new Error(
        `${p.label}: the tracker does not list the seeder (${p.running ? 'timeout' : 'exited'}):\n` +
          `${p.stdout().slice(-2000)}\n${p.stderr().slice(-2000)}`,
      );
    await new Promise((r) => setTimeout(r, 100));
  }

  /** Payload bytes the seeder has uploaded so far (aria2c's own counter, over JSON-RPC on its loopback). */
  async seederUploaded(): Promise<number> {
    const r = await this.opts.seeder.exec('curl', [
      '-sf',
      '--max-time',
      '10',
      '-d',
      TELL_ACTIVE,
      `http://127.0.0.1:${RPC_PORT}/jsonrpc`,
    ]);
    return parseUploadLength(r.stdout);
  }

  /** CPU seconds the seeder has used so far. */
  seederCpuS(): number {
    return this.seeder ? processCpu(this.seeder.pid) : NaN;
  }

  /** An aria2c leecher (fresh download directory) in each of `hosts`, all spawned at once. */
  startLeechers(hosts: NetnsHost[]): BtLeecher[] {
    const n = ++this.runs;
    return hosts.map((h) => {
      const dir = join(this.dir, `run-${n}`, h.name);
      const proc = NsProc.spawn(
        `aria2c ${h.name}`,
        h,
        'aria2c',
        aria2Args({
          torrent: this.torrent,
          dir,
          ip: h.ip,
          role: 'leecher',
          hook: join(this.dir, 'complete.sh'),
          exitWhenDone: this.opts.exitWhenDone,
          watchPid: process.pid,
        }),
      );
      this.procs.push(proc);
      return {
        host: h,
        proc,
        result: async (timeoutMs?: number) => {
          const l = await proc.waitLine(/^bt-complete /, timeoutMs);
          return { host: h.name, ms: l.at };
        },
        verified: async () => {
          for (const f of this.opts.files) {
            const d = await fileDigest(join(dir, NAME, f.digest.replace(/^sha256:/, ''))).catch(() => '');
            if (d !== f.digest) return false;
          }
          return true;
        },
        cpuS: () => processCpu(proc.pid),
      };
    });
  }

  /** Stops the tracker, seeder and every leecher (by PID) and deletes the downloads. */
  async stopAll(): Promise<void> {
    const ps = this.procs.splice(0);
    this.seeder = undefined;
    await Promise.all(ps.map((p) => p.stop(5000).catch(() => undefined)));
    for (let i = 1; i <= this.runs; i++)
      await rm(join(this.dir, `run-${i}`), { recursive: true, force: true });
  }
}
