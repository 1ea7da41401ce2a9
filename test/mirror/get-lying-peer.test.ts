/**
 * A lying cluster member: a real P2pNode in this process announces every piece of a file to the seed's
 * tracker and serves them all corrupted. A `dfnode get` process asks it, finds each piece fails
 * verification against the seed's piece table, isolates it and takes the pieces from the seed: no byte
 * from the liar is kept and the file verifies.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { BlobCache } from '../../src/cache/blob-cache.js';
import { loadConfig } from '../../src/config.js';
import { PieceHasher, PieceLayout, PIECE_SIZE } from '../../src/mirror/piece-table.js';
import { P2pNode } from '../../src/p2p/p2p-node.js';
import { trackerAddress } from '../../src/p2p/rendezvous.js';
import { TrackerClient } from '../../src/p2p/tracker-service.js';
import { flipBits } from '../helpers/bytes.js';
import { runCli } from '../helpers/cli.js';
import { startSeedProc } from '../helpers/dfnode-proc.js';
import { sha256File } from '../helpers/digest.js';
import { getNodeFlags, startFileOrigin } from '../helpers/file-origin.js';
import { tempDir } from '../helpers/temp.js';

const TOKEN = 'get-liar-token';
const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  while (cleanups.length) await cleanups.pop()!();
});

describe('dfnode get and a lying peer', () => {
  it('isolates a peer whose pieces fail verification and gets the file from the seed', async () => {
    const { dir, cleanup } = await tempDir('dfnode-get-liar-');
    cleanups.push(cleanup);
    const origin = await startFileOrigin();
    cleanups.push(() => origin.close());
    const data = randomBytes(16 * PIECE_SIZE);
    origin.put('/f', data);
    const h = new PieceHasher();
    h.update(data);
    const table = h.finish();
    const seed = await startSeedProc(dir, 'seed', ['--cluster-token', TOKEN], {
      DFNODE_P2P_SEED_ORIGINS: origin.base,
    });
    cleanups.push(() => seed.proc.stop());

    // the liar: every piece "held", every piece corrupt
    const cfg = loadConfig({
      env: {},
      flags: {
        p2p: { seeds: [seed.addr], clusterToken: TOKEN, listen: '127.0.0.1:0', announceIntervalMs: 200 },
      },
    });
    const liar = new P2pNode({ config: cfg });
    cleanups.push(() => liar.close());
    await liar.start();
    const layout = new PieceLayout(table.size, table.pieceSize);
    const cache = await BlobCache.open({
      dir: join(dir, 'liar-cache'),
      digest: table.digest,
      size: table.size,
    });
    cleanups.push(() => cache.close());
    const { blockCount, tocOffset } = layout.cacheLayout;
    await cache.setLayout(blockCount, tocOffset);
    for (let u = 0; u < layout.units; u++) {
      const lie = Buffer.from(data.subarray(layout.offset(u), layout.offset(u) + layout.length(u)));
      flipBits(lie, 1000);
      await cache.write(u, layout.offset(u), lie);
    }
    const member = liar.joinUnits({ blob: { digest: table.digest, size: table.size }, layout, cache });
    cleanups.push(() => member.leave());
    // the tracker names the liar before the get starts
    const tracker = new TrackerClient(trackerAddress(seed.addr), TOKEN, 5000);
    cleanups.push(() => Promise.resolve(tracker.close()));
    for (let i = 0; ; i++) {
      const a = await tracker.lookup({
        blob: table.digest,
        peer_id: 'test',
        want_bitmap: new Uint8Array(Math.ceil(layout.units / 8)).fill(0xff),
        max_peers: 8,
      });
      if (a.holders?.some((x) => x.peer_id === liar.id)) break;
      if (i > 100) throw new Error('the liar never showed up in the tracker');
      await new Promise((r) => setTimeout(r, 50));
    }

    const out = join(dir, 'out.bin');
    const r = await runCli(
      'dfnode',
      [
        'get',
        `${origin.base}/f`,
        '-O',
        out,
        '--digest',
        table.digest,
        ...getNodeFlags(dir, '', TOKEN, seed.addr),
      ],
      // slow enough that the liar is known before the last pieces are asked for
      { timeoutMs: 300_000, env: { DFNODE_P2P_DOWNLOAD_RATE: '32M' } },
    );
    expect(r.code, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout.trim()) as { bytes: Record<string, number> };
    expect(res.bytes.peer ?? 0).toBe(0);
    expect(res.bytes.seed).toBe(table.size);
    expect(liar.server.counters.served).toBeGreaterThan(0);
    expect(r.stderr).toMatch(/peer isolated/);
    expect(r.stderr).toMatch(/bad block/);
    expect('sha256:' + (await sha256File(out))).toBe(table.digest);
  }, 400_000);
});
