// Child process of the netns P2P tests (P2pCluster.lookup): one tracker lookup from inside a host's namespace
// (the test process lives in the root namespace, which has no route to the hosts). Prints one JSON line:
// {"units":N,"holders":[{"peer_id","address","present","pending"}]} (counts of units held and on their way
// from the seed) or, when the tracker refuses or fails,
// {"units":0,"holders":[],"error":"CODE","message":"..."} (exit 0 in both cases: the caller reads the line).
//
//   DFNODE_P2P_CLUSTER_TOKEN=... node dist/bench/lib/tracker-lookup.js TRACKER BLOB
import { DfError } from '../../src/errors.js';
import { TrackerClient } from '../../src/p2p/tracker-service.js';

const [tracker, blob] = process.argv.slice(2);
if (!tracker || !blob) {
  process.stderr.write('usage: DFNODE_P2P_CLUSTER_TOKEN=... tracker-lookup.js TRACKER BLOB\n');
  process.exit(2);
}
const popcount = (b: Uint8Array) =>
  b.reduce((a, x) => a + [...x.toString(2)].filter((c) => c === '1').length, 0);

const t = new TrackerClient(tracker, process.env.DFNODE_P2P_CLUSTER_TOKEN ?? '', 5000);
try {
  const r = await t.lookup({ blob, peer_id: 'tracker-lookup', want: [] });
  const holders = r.holders.map((h) => ({
    peer_id: h.peer_id,
    address: h.address,
    present: popcount(h.bitmap),
    pending: popcount(h.pending ?? new Uint8Array(0)),
  }));
  process.stdout.write(JSON.stringify({ units: r.units, holders }) + '\n');
} catch (err) {
  const e = DfError.from(err);
  process.stdout.write(JSON.stringify({ units: 0, holders: [], error: e.code, message: e.message }) + '\n');
} finally {
  t.close();
}
