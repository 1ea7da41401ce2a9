// bench/coldstart's images (fixture + what runs in the container) and variants (how the image gets into
// containerd and which snapshotter runs it).
import { spawnSync } from 'node:child_process';

export interface Workload {
  /** The command `ctr run` starts. */
  cmd: string[];
  env?: string[];
  /** Whether the container's stdout is what the workload prints when it worked. */
  ok(stdout: string): boolean;
}

/** The images of the benchmark: a test fixture each, and its first run. */
export const WORKLOADS: Record<string, Workload> = {
  'debian-python': {
    cmd: ['python3', '-c', 'import json, os, re, subprocess; print(1)'],
    env: ['PYTHONDONTWRITEBYTECODE=1'],
    ok: (out) => out.trim() === '1',
  },
  debian: { cmd: ['ls', '/usr/bin'], ok: (out) => out.split('\n').includes('ls') },
  'debian-node': {
    cmd: ['node', '-e', 'require("http"); require("zlib"); console.log(1)'],
    ok: (out) => out.trim() === '1',
  },
};

export interface Variant {
  key: string;
  name: string;
  kind: 'dfnode' | 'overlayfs';
  /**
   * How the image gets into containerd: `ctr images pull` (overlayfs), `dfnode pull` handed to `dfnode run`
   * over its control socket (daemon), `dfnode pull --direct` (the CLI talks gRPC itself), or PullImage through
   * containerd's CRI plugin (cri).
   */
  pull: 'ctr' | 'daemon' | 'direct' | 'cri';
  /** Pull the image converted with a recorded prefetch list (dfconvert --optimize). */
  optimized?: boolean;
  /** `dfnode run` config on top of the directories (dfnode variants). */
  config?: Record<string, Record<string, unknown>>;
  fill: string;
}

export function variantsFor(fillRate: number): Record<string, Variant> {
  const fillLabel = `${(fillRate / 1e6).toFixed(1)} MB/s`;
  const dfnode = { kind: 'dfnode', pull: 'daemon', fill: 'on, unlimited (default)' } as const;
  return {
    overlayfs: { key: 'overlayfs', name: 'overlayfs (ctr pull)', kind: 'overlayfs', pull: 'ctr', fill: '' },
    dfnode: { key: 'dfnode', name: 'dfnode (default config)', ...dfnode },
    'dfnode-prefetch': {
      key: 'dfnode-prefetch',
      name: 'dfnode, recorded prefetch (--optimize)',
      ...dfnode,
      optimized: true,
    },
    'dfnode-direct': {
      key: 'dfnode-direct',
      name: 'dfnode, pull --direct (no daemon)',
      ...dfnode,
      pull: 'direct',
    },
    'dfnode-cri': { key: 'dfnode-cri', name: 'dfnode via CRI PullImage', ...dfnode, pull: 'cri' },
    'dfnode-fill-capped': {
      key: 'dfnode-fill-capped',
      name: `dfnode, fill ≤ ${fillLabel}`,
      ...dfnode,
      config: { fetch: { fillRate } },
      fill: `on, fetch.fillRate ${fillRate} B/s`,
    },
    'dfnode-no-fill': {
      key: 'dfnode-no-fill',
      name: 'dfnode, no fill',
      ...dfnode,
      config: { fetch: { backgroundFill: false } },
      fill: 'off (fetch.backgroundFill false)',
    },
  };
}

export const DEFAULT_VARIANTS = 'overlayfs,dfnode,dfnode-prefetch,dfnode-direct,dfnode-cri';

/** Whether this dfconvert has `--optimize` (record the workload, then lay out what it read first). */
export function hasOptimize(dfconvert: string): boolean {
  const r = spawnSync(process.execPath, [dfconvert, '--help'], { encoding: 'utf8' });
  return r.status === 0 && /--optimize\b/.test(r.stdout);
}

/** dfconvert's arguments for the recorded-prefetch conversion (the CLI fixed between the helpers of issue 12). */
export function optimizeArgs(source: string, dest: string, workDir: string, w: Workload): string[] {
  return ['--plain-http', '--quiet', '--work-dir', workDir, '--optimize', source, dest, '--', ...w.cmd];
}
