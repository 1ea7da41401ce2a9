// bench/p2p's rows (one per mode and N) and their table.
import { formatTable } from './measure.js';

/** One mode at one N. */
export interface P2pRow<Mode extends string = string> {
  n: number;
  mode: Mode;
  meanS: number;
  maxS: number;
  /** Payload bytes the registry host served (docker-registry's access log; BitTorrent: the seeder's counter) / blob. */
  egress: number;
  /** The registry host link's tx bytes (headers included) / blob. */
  egressWire: number;
  fromPeers?: number;
  fromSeed?: number;
  fromRegistry?: number;
  verified?: boolean;
  /** Busy share of the machine's CPUs during the phase. */
  cpu?: number;
  /** CPU seconds a node process (dfnode or aria2c) used until every node was done (mean), and the seed(er). */
  nodeCpuS?: number;
  seedCpuS?: number;
  /** GiB a node's link carried in and out over the same span (mean), and the seed's (dfnode-run, -warm). */
  nodeMovedGiB?: number;
  seedMovedGiB?: number;
}

const pct = (x?: number) => (x === undefined ? '' : `${(x * 100).toFixed(0)}%`);
const num = (x: number | undefined, digits = 1) =>
  x === undefined || Number.isNaN(x) ? '' : x.toFixed(digits);

/** The table of `rows`; `gib`: the layer's size in GiB (the per-GiB columns). */
export function rowsTable(rows: P2pRow[], gib: number): string {
  return formatTable(
    [
      'N',
      'mode',
      'mean s',
      'max s',
      'registry egress ×',
      'wire ×',
      'peers',
      'seed',
      'registry',
      'ok',
      'cpu',
      'node cpu s',
      'node s/GiB',
      's/GiB moved',
      'seed cpu s',
      'seed s/GiB',
      's/GiB moved',
    ],
    rows.map((x) => [
      String(x.n),
      x.mode,
      x.meanS.toFixed(1),
      x.maxS.toFixed(1),
      x.egress.toFixed(2),
      x.egressWire.toFixed(2),
      pct(x.fromPeers),
      pct(x.fromSeed),
      pct(x.fromRegistry),
      x.verified ? 'yes' : 'NO',
      pct(x.cpu),
      num(x.nodeCpuS),
      num(x.nodeCpuS === undefined ? undefined : x.nodeCpuS / gib, 0),
      num(x.nodeCpuS === undefined || !x.nodeMovedGiB ? undefined : x.nodeCpuS / x.nodeMovedGiB, 0),
      num(x.seedCpuS),
      num(x.seedCpuS === undefined ? undefined : x.seedCpuS / gib, 0),
      num(x.seedCpuS === undefined || !x.seedMovedGiB ? undefined : x.seedCpuS / x.seedMovedGiB, 0),
    ]),
  );
}
