// Part 2 of bench/fuse-read: cold start of a workload from a lazily mounted image
// over a registry in a shaped network namespace, against a full pull + unpack.
import { mkdir, rm } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { DfnodeMount } from './dfnode-mount.js';
import { formatTable, median, run } from './measure.js';
import type { Netns } from './netns.js';

/** chroot by absolute path: the workload's environment replaces PATH. */
export const CHROOT =
  spawnSync('sh', ['-c', 'command -v chroot'], { encoding: 'utf8' }).stdout.trim() || '/usr/sbin/chroot';
export const WORKLOAD = ['/usr/bin/python3', '-c', 'import json, os, re, subprocess'];
export const WORKLOAD_ENV = {
  PATH: '/usr/local/bin:/usr/bin:/bin',
  PYTHONDONTWRITEBYTECODE: '1',
  LANG: 'C.UTF-8',
};

export interface ColdStartOptions {
  ns: Netns;
  mbit: number;
  runs: number;
  /** Scratch directory (a `cold/` directory is made and removed in it). */
  work: string;
  dfnodeCli: string;
  /** The converted image (`…:dfb`) and the repository holding the source image as `:latest`. */
  ref: string;
  repo: string;
  /** The unpacked source image, for the local reference time of the workload. */
  rootfs: string;
  /** Mounts in use, so that the caller's cleanup can stop them. */
  mounts: Set<{ stop(): Promise<void> }>;
  /** Whether the native FUSE addon is built (dfnode's default binding then uses it). */
  nativeAddon: boolean;
  log: (s: string) => void;
  out: NodeJS.WritableStream;
}

/** Shapes the link, runs every variant `runs` times (interleaved), prints a table; returns the JSON part. */
export async function runColdStart(o: ColdStartOptions): Promise<Record<string, unknown>> {
  const { ns, mbit, runs, work, ref, repo, rootfs, mounts, log, out } = o;
  await ns.shape(mbit);
  const shaping = await ns.describeShaping();
  log(`link shaped: ${shaping}`);
  interface ColdSample {
    seconds: number;
    bytes: number;
    steps: Record<string, number>;
  }
  const samples: Record<string, ColdSample[]> = {};
  const cold = join(work, 'cold');
  // A quarter of the link for background fill (bytes/s), to see what fill costs the workload.
  const fillRate = Math.round((mbit * 1e6) / 8 / 4);
  const fillRateLabel = `${(fillRate / 1e6).toFixed(1)} MB/s`;
  // the largest file of the image, read front to back through the lazy mount: read-ahead on vs off
  const big = spawnSync(
    'sh',
    ['-c', `cd '${rootfs}' && find . -xdev -type f -printf '%s %P\\n' | sort -n | tail -1`],
    {
      encoding: 'utf8',
    },
  ).stdout.trim();
  const bigPath = big.slice(big.indexOf(' ') + 1);
  const bigBytes = Number(big.slice(0, big.indexOf(' ')));
  /**
   * A fresh `dfnode mount` of the image (empty cache) while `use` runs on it; stopped afterwards. `use` gets
   * the clock and the link's byte count as they were just before the mount started.
   */
  const withFreshMount = async <T>(
    mount: { config?: Record<string, unknown>; fillRate?: string },
    use: (m: DfnodeMount, start: { t0: bigint; rx0: number }) => Promise<T>,
  ): Promise<T> => {
    await rm(cold, { recursive: true, force: true });
    await mkdir(cold, { recursive: true });
    const start = { rx0: ns.hostRxBytes(), t0: process.hrtime.bigint() };
    const m = await DfnodeMount.start({
      cli: o.dfnodeCli,
      ref,
      target: join(cold, 'mnt'),
      cacheDir: join(cold, 'cache'),
      stateDir: join(cold, 'state'),
      ...mount,
    });
    mounts.add(m);
    try {
      return await use(m, start);
    } finally {
      await m.stop();
      mounts.delete(m);
    }
  };
  const sequential = (readAhead: boolean): Promise<ColdSample> =>
    withFreshMount({ config: { fetch: { backgroundFill: false, readAhead } } }, async () => {
      const rx0 = ns.hostRxBytes();
      const r = await run('dd', [`if=${join(cold, 'mnt', bigPath)}`, 'of=/dev/null', 'bs=1M']);
      return { seconds: r.seconds, bytes: ns.hostRxBytes() - rx0, steps: { read: r.seconds } };
    });
  const lazy = (fill: boolean, rate?: number): Promise<ColdSample> =>
    withFreshMount(
      {
        config: fill ? undefined : { fetch: { backgroundFill: false } },
        fillRate: rate ? String(rate) : undefined,
      },
      async (m, { t0, rx0 }) => {
        const w = await run(CHROOT, [join(cold, 'mnt'), ...WORKLOAD], { env: WORKLOAD_ENV });
        const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
        const bytes = ns.hostRxBytes() - rx0;
        return { seconds, bytes, steps: { mount: m.mountSeconds, workload: w.seconds } };
      },
    );
  const full = async (): Promise<ColdSample> => {
    await rm(cold, { recursive: true, force: true });
    await mkdir(cold, { recursive: true });
    const rx0 = ns.hostRxBytes();
    const t0 = process.hrtime.bigint();
    const c = await run('skopeo', [
      'copy',
      '-q',
      '--src-tls-verify=false',
      `docker://${repo}:latest`,
      `oci:${join(cold, 'oci')}:latest`,
    ]);
    const u = await run('umoci', ['unpack', '--image', `${join(cold, 'oci')}:latest`, join(cold, 'bundle')]);
    const w = await run(CHROOT, [join(cold, 'bundle', 'rootfs'), ...WORKLOAD], { env: WORKLOAD_ENV });
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    return {
      seconds,
      bytes: ns.hostRxBytes() - rx0,
      steps: { download: c.seconds, unpack: u.seconds, workload: w.seconds },
    };
  };
  const variants: Record<string, () => Promise<ColdSample>> = {
    'dfnode lazy': () => lazy(true),
    'dfnode lazy, no fill': () => lazy(false),
    [`dfnode lazy, fill ≤ ${fillRateLabel}`]: () => lazy(true, fillRate),
    'full pull+unpack': full,
    [`sequential read, read-ahead on`]: () => sequential(true),
    [`sequential read, read-ahead off`]: () => sequential(false),
  };
  for (let r = 1; r <= runs; r++)
    for (const [name, fn] of Object.entries(variants)) {
      log(`cold run ${r}/${runs}: ${name}`);
      (samples[name] ??= []).push(await fn());
    }
  await rm(cold, { recursive: true, force: true });
  const ref0 = await run(CHROOT, [rootfs, ...WORKLOAD], { env: WORKLOAD_ENV });
  const agg: Record<string, { seconds: number; bytes: number; steps: Record<string, number> }> = {};
  for (const [name, ss] of Object.entries(samples)) {
    const steps: Record<string, number> = {};
    for (const k of Object.keys(ss[0]!.steps)) steps[k] = +median(ss.map((s) => s.steps[k]!)).toFixed(2);
    agg[name] = {
      seconds: +median(ss.map((s) => s.seconds)).toFixed(2),
      bytes: Math.round(median(ss.map((s) => s.bytes))),
      steps,
    };
  }
  const fullAgg = agg['full pull+unpack']!;
  const ratios: Record<string, { speedup: number; bytesFraction: number }> = {};
  const raOn = agg['sequential read, read-ahead on']!;
  const raOff = agg['sequential read, read-ahead off']!;
  const readAhead = {
    file: bigPath,
    fileBytes: bigBytes,
    onSeconds: raOn.seconds,
    offSeconds: raOff.seconds,
    speedup: +(raOff.seconds / raOn.seconds).toFixed(2),
  };
  for (const name of Object.keys(variants).filter((n) => n.startsWith('dfnode')))
    ratios[name] = {
      speedup: +(fullAgg.seconds / agg[name]!.seconds).toFixed(2),
      bytesFraction: +(agg[name]!.bytes / fullAgg.bytes).toFixed(3),
    };
  out.write(
    `\n2. cold start — registry in netns ${ns.name}, link ${mbit} Mbit/s each way (tc htb; no added latency); ` +
      `workload: chroot ROOT ${WORKLOAD.join(' ')}; ${runs} runs, medians; dfnode with its default ` +
      `FUSE binding (auto: ${o.nativeAddon ? 'native addon built' : 'fuse-native, addon not built'})\n`,
  );
  out.write(
    `   bytes = what the registry side sent over the veth (IP+TCP included); ` +
      `the same workload on the local unpacked rootfs takes ${ref0.seconds.toFixed(2)} s\n\n`,
  );
  out.write(
    formatTable(
      ['variant', 'sec', 'MB from registry', 'steps (s)', 'speedup vs full', 'bytes vs full'],
      Object.entries(agg).map(([name, a]) => [
        name,
        a.seconds.toFixed(2),
        (a.bytes / 1e6).toFixed(1),
        Object.entries(a.steps)
          .map(([k, v]) => `${k} ${v.toFixed(2)}`)
          .join(', '),
        ratios[name] ? `${ratios[name]!.speedup.toFixed(2)}×` : '',
        ratios[name] ? ratios[name]!.bytesFraction.toFixed(3) : '',
      ]),
    ) + '\n\n',
  );
  out.write(
    "  dfnode lazy: from spawning `dfnode mount` to the workload's exit (background fill on, as by default: " +
      'its traffic until then is counted); no fill: fetch.backgroundFill false; fill ≤ R: --fill-rate R\n  full pull+unpack: skopeo copy docker:// → oci: + umoci unpack + workload\n',
  );
  out.write(
    `  sequential read: dd of the largest file (/${bigPath}, ${(bigBytes / 1e6).toFixed(1)} MB) from a fresh ` +
      `mount, no fill; fetch.readAhead on vs off: read-ahead speedup ${readAhead.speedup.toFixed(2)}× ` +
      `(${raOff.seconds.toFixed(2)} s / ${raOn.seconds.toFixed(2)} s)\n`,
  );
  return {
    mbit,
    runs: runs,
    binding: o.nativeAddon ? 'auto (native)' : 'auto (fuse-native)',
    shaping,
    workload: WORKLOAD.join(' '),
    localWorkloadSeconds: +ref0.seconds.toFixed(2),
    results: agg,
    ratios,
    readAhead,
  };
}
