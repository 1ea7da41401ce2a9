/**
 * Hosts as network namespaces for integration tests: a hub namespace with a bridge, one namespace per host
 * (registry, seeds, nodes) joined to it by a veth shaped with tc htb, commands run inside with
 * `ip netns exec`. The implementation lives in bench/lib (bench/p2p uses the same topology, and bench/ is
 * compiled while test/ is not); this module adds the prerequisites check.
 *
 *   const topo = await NetnsTopology.create({ hosts: [{ name: 'registry', mbit: 40 }, { name: 'node1', mbit: 20 }] });
 *   try { await topo.host('node1').exec('curl', [...]); } finally { await topo.destroy(); }
 */
import { spawnSync } from 'node:child_process';
import { requireTools, type Requirement } from './require.js';

export {
  NetnsHost,
  NetnsTopology,
  type HostSpec,
  type TopologyOptions,
} from '../../bench/lib/netns-topology.js';
export { NsRegistry } from '../../bench/lib/ns-registry.js';
export {
  NsProc,
  P2pCluster,
  type ClusterOptions,
  type LookupAnswer,
  type PreheatOptions,
  type PreheatResult,
  type PreheatRun,
  type SeedProc,
} from '../../bench/lib/p2p-cluster.js';

/** Root, iproute2 with netns support, tc and `extraTools`; skips locally with a reason, throws in CI. */
export function requireNetns(extraTools: string[] = []): Requirement {
  return requireTools(['ip', 'tc', ...extraTools], {
    check: () => {
      if (process.getuid?.() !== 0) return 'network namespaces need root';
      const r = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' });
      if (r.status !== 0) return `ip netns does not work: ${(r.stderr ?? '').trim()}`;
      return undefined;
    },
  });
}
