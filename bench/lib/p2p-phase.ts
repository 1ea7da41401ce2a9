// bench/p2p's per-phase measurements: the links' rates each second (--trace) and CPU times from /proc.
import { readFileSync } from 'node:fs';
import type { NetnsHost } from './netns-topology.js';
import type { P2pCluster } from './p2p-cluster.js';

/** Samples the seed's and registry's link counters every second; logs the rates when stopped. */
export function traceLinks(cluster: P2pCluster, n: number, log: (s: string) => void): () => void {
  const seed = cluster.topo.host('seed');
  const reg = cluster.topo.host('registry');
  const nodes = cluster.nodes.slice(0, n);
  type Sample = { seedRx: number; seedTx: number; regTx: number; nodesRx: number; nodesTx: number };
  const samples: Sample[] = [];
  let stopped = false;
  const read = async () => {
    const ns = await Promise.all(nodes.map((h) => h.counters()));
    return {
      s: await seed.counters(),
      r: await reg.counters(),
      rx: ns.reduce((a, x) => a + x.rx, 0),
      tx: ns.reduce((a, x) => a + x.tx, 0),
    };
  };
  void (async () => {
    let prev = await read();
    let t = Date.now();
    while (!stopped) {
      await new Promise((r) => setTimeout(r, 1000));
      const now = await read();
      // reading every host's counters takes a while: rates over the real interval
      const s = (Date.now() - t) / 1000;
      t = Date.now();
      samples.push({
        seedRx: (now.s.rx - prev.s.rx) / s,
        seedTx: (now.s.tx - prev.s.tx) / s,
        regTx: (now.r.tx - prev.r.tx) / s,
        nodesRx: (now.rx - prev.rx) / n / s,
        nodesTx: (now.tx - prev.tx) / n / s,
      });
      prev = now;
    }
  })();
  return () => {
    stopped = true;
    const f = (k: keyof Sample) => samples.map((x) => (x[k] / 1e6).toFixed(1)).join(' ');
    log(
      `N=${n} trace (MB/s each second)\n  registry tx:  ${f('regTx')}\n  seed rx:      ${f('seedRx')}\n` +
        `  seed tx:      ${f('seedTx')}\n  node rx mean: ${f('nodesRx')}\n  node tx mean: ${f('nodesTx')}`,
    );
  };
}

/** CPU times of the whole machine (/proc/stat): busySince() tells whether a phase was CPU-bound. */
export function cpuTimes(): { total: number; idle: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return { total: f.reduce((a, x) => a + x, 0), idle: f[3]! + (f[4] ?? 0) };
}
export function busySince(from: { total: number; idle: number }): number {
  const now = cpuTimes();
  return 1 - (now.idle - from.idle) / Math.max(1, now.total - from.total);
}

/** What the hosts' links carried in and out so far, GiB. */
export async function movedGiB(hosts: NetnsHost[]): Promise<number> {
  return (await Promise.all(hosts.map((h) => h.counters()))).reduce((a, c) => a + c.rx + c.tx, 0) / 2 ** 30;
}

/**
 * The seed's dfnode_tracker_requests_total by method, read from its metrics on `port` in its namespace
 * (undefined when they do not answer): announces, and lookups sent on their own.
 */
export async function trackerCalls(
  cluster: P2pCluster,
  port: number,
): Promise<{ announce: number; lookup: number; answers: Record<string, number> } | undefined> {
  const text = await metricsText(cluster.seedHost, port);
  if (text === undefined) return undefined;
  const get = (m: string) =>
    Number(new RegExp(`^dfnode_tracker_requests_total\\{method="${m}"\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
  return { announce: get('announce'), lookup: get('lookup'), answers: blockAnswers(text) };
}

/**
 * The block requests the `hosts`' dfnode daemons answered, by how (served, busy, missing, ...), summed over
 * the hosts, from their metrics on `port` in their namespaces; hosts whose metrics do not answer count none.
 */
export async function nodeAnswers(hosts: NetnsHost[], port: number): Promise<Record<string, number>> {
  const sum: Record<string, number> = {};
  for (const text of await Promise.all(hosts.map((h) => metricsText(h, port))))
    for (const [k, v] of Object.entries(blockAnswers(text ?? ''))) sum[k] = (sum[k] ?? 0) + v;
  return sum;
}

/** `now - before` per key, as `key N, key N` (keys with no change left out). */
export function answersSince(now: Record<string, number>, before: Record<string, number>): string {
  return (
    Object.entries(now)
      .map(([k, v]) => [k, v - (before[k] ?? 0)] as const)
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ') || 'none'
  );
}

/** A block server's requests by how it answered them (dfnode_peer_requests_total by result). */
function blockAnswers(text: string): Record<string, number> {
  const answers: Record<string, number> = {};
  for (const m of text.matchAll(/^dfnode_peer_requests_total\{result="([a-z_]+)"\} (\d+)/gm))
    answers[m[1]!] = Number(m[2]);
  return answers;
}

/** The metrics page a process in `host`'s namespace serves on 127.0.0.1:`port`, or undefined. */
async function metricsText(host: NetnsHost, port: number): Promise<string | undefined> {
  try {
    const r = await host.exec('curl', ['-sf', '--max-time', '5', `http://127.0.0.1:${port}/metrics`]);
    return r.stdout;
  } catch {
    return undefined;
  }
}
