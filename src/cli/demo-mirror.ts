// The demo's mirror part: the unconverted image pulled by containerd through the private node's registry
// mirror (hosts.toml), its blobs in verified pieces through the embedded seed, and a container run from it.
import { join } from 'node:path';
import { DfError } from '../errors.js';
import { writeContainerdHosts } from '../mirror/containerd-hosts.js';
import type { PrivateNode } from './private-node.js';

export interface DemoMirrorOptions {
  node: PrivateNode;
  /** host:port of the node's mirror. */
  mirror: string;
  /** The node's metrics endpoint (host:port). */
  metricsAddress: string;
  /** The unconverted image. */
  ref: string;
  /** Bytes of its layers. */
  imageBytes: number;
  /** host:port of the registry the image is in. */
  registryHost: string;
  /** Where the hosts.toml goes (below the demo's directory). */
  dir: string;
  /** Number of the first line printed. */
  step: number;
  out: (line: string) => void;
  signal: AbortSignal;
}

/** Sums of a Prometheus counter by one label (`name{label="x"} n` lines; other labels are not expected). */
export function counterBy(metrics: string, name: string, label: string): Record<string, number> {
  const by: Record<string, number> = {};
  const re = new RegExp(`^${name}\\{${label}="(\\w+)"\\} (\\S+)$`, 'gm');
  for (const m of metrics.matchAll(re)) by[m[1]!] = (by[m[1]!] ?? 0) + Number(m[2]);
  return by;
}

const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;

/**
 * Writes a hosts.toml for the image's registry naming the node's mirror, `ctr images pull`s the unconverted
 * image with it, runs the image's command with containerd's own snapshotter and prints the container's output
 * and the mirror's blob bytes by source. Returns the next step number.
 */
export async function demoThroughMirror(o: DemoMirrorOptions): Promise<number> {
  let step = o.step;
  const hosts = join(o.dir, 'certs.d');
  await writeContainerdHosts(hosts, o.mirror, { registry: o.registryHost });
  o.out(
    `${step++}. registry mirror of dfnode run on ${o.mirror}; ${join(hosts, o.registryHost, 'hosts.toml')} ` +
      'sends the private containerd to it',
  );
  let t0 = Date.now();
  await o.node.pullWithHosts(o.ref, hosts);
  o.out(
    `${step++}. ctr images pull --hosts-dir ${hosts} ${o.ref} (the unconverted image, ${kib(o.imageBytes)} ` +
      `of layers): ${Date.now() - t0} ms`,
  );
  t0 = Date.now();
  const run = await o.node.run(o.ref, `dfnode-demo-m-${process.pid}`, [], 120, 'overlayfs');
  if (run.code !== 0)
    throw new DfError(
      'INTERNAL',
      `the container of the unconverted image ${run.timedOut ? 'did not finish within 120 s' : `exited with ${run.code ?? 'a signal'}`}: ${run.stderr}`,
    );
  o.out(
    `${step++}. ctr run (the unconverted image, overlayfs, runc): exit 0 in ${Date.now() - t0} ms; it printed:`,
  );
  for (const line of run.stdout.trimEnd().split('\n')) o.out(`      | ${line}`);
  const res = await fetch(`http://${o.metricsAddress}/metrics`, { signal: o.signal });
  if (!res.ok) throw new DfError('INTERNAL', `dfnode run's metrics answered ${res.status}`);
  const text = await res.text();
  const sent = counterBy(text, 'dfnode_mirror_bytes_total', 'kind').blob ?? 0;
  const pieces = counterBy(text, 'dfnode_mirror_piece_bytes_total', 'source');
  const events = counterBy(text, 'dfnode_mirror_events_total', 'event');
  const manifests = counterBy(text, 'dfnode_mirror_requests_total', 'kind').manifest ?? 0;
  o.out(
    `${step++}. the mirror sent containerd ${kib(sent)} of blobs, their pieces came ${kib(pieces.seed ?? 0)} through ` +
      `the seed, ${kib(pieces.peer ?? 0)} from peers, ${kib(pieces.registry ?? 0)} from the registry directly ` +
      '(each piece verified, the whole blob checked against its digest); ' +
      `${events.seed_manifest ?? 0} of its ${manifests} manifest answers came from the seed (which keeps them for a registry outage)`,
  );
  return step;
}
