// Child process of the netns P2P fault test (P2pCluster.startLiar): a cluster member (it has the token) whose
// block server answers every range with the right length of 0x5a bytes, and which tells each tracker it holds
// every unit of every blob. A tracker learns a blob's unit count from a real node's announce, so the liar
// asks (lookup) every 500 ms and announces once the count is known, then keeps its entry alive.
//
//   DFNODE_P2P_CLUSTER_TOKEN=... node dist/bench/lib/p2p-liar.js LISTEN TRACKER[,TRACKER...] BLOB[,BLOB...]
//
// stdout, one line each: `liar serving on HOST:PORT`; `announced BLOB to TRACKER` (first time per pair);
// `hit CLIENT_IP OFFSET LENGTH` per block request. Stops on SIGTERM.
import { createServer } from 'node:http';
import { splitHostPort } from '../../src/util/listen.js';
import { TrackerClient } from '../../src/p2p/tracker-service.js';

const [listen, trackerList, blobList] = process.argv.slice(2);
const token = process.env.DFNODE_P2P_CLUSTER_TOKEN ?? '';
if (!listen || !trackerList || !blobList || !token) {
  process.stderr.write('usage: DFNODE_P2P_CLUSTER_TOKEN=... p2p-liar.js LISTEN TRACKERS BLOBS\n');
  process.exit(2);
}
const out = (line: string) => process.stdout.write(line + '\n');

const server = createServer((req, res) => {
  const u = new URL(req.url ?? '/', 'http://liar');
  const offset = Number(u.searchParams.get('offset'));
  const length = Number(u.searchParams.get('length'));
  out(`hit ${req.socket.remoteAddress?.replace(/^::ffff:/, '')} ${offset} ${length}`);
  if (!Number.isSafeInteger(length) || length <= 0 || length > 64 << 20) {
    res.writeHead(400).end();
    return;
  }
  res.writeHead(200, { 'content-length': length }).end(Buffer.alloc(length, 0x5a));
});
const { host, port } = splitHostPort(listen);
await new Promise<void>((r) => server.listen(port, host, r));

const trackers = trackerList.split(',').map((a) => new TrackerClient(a, token, 5000));
const blobs = blobList.split(',');
const announced = new Set<string>();

async function announceAll(): Promise<void> {
  for (const t of trackers)
    for (const blob of blobs) {
      const lk = await t.lookup({ blob, peer_id: 'liar', want: [] }).catch(() => undefined);
      if (!lk?.units) continue;
      const r = await t
        .announce({
          blob,
          units: lk.units,
          peer_id: 'liar',
          address: listen!,
          full: true,
          bitmap: Buffer.alloc(Math.ceil(lk.units / 8), 0xff),
        })
        .catch(() => undefined);
      const key = `${blob} to ${t.address}`;
      if (r && !announced.has(key)) {
        announced.add(key);
        out(`announced ${key}`);
      }
    }
}

let busy = false;
const beat = setInterval(() => {
  if (busy) return;
  busy = true;
  void announceAll().finally(() => (busy = false));
}, 500);
out(`liar serving on ${listen}`);

process.once('SIGTERM', () => {
  clearInterval(beat);
  for (const t of trackers) t.close();
  server.closeAllConnections();
  server.close(() => process.exit(0));
});
