/**
 * A lying cluster member: a real P2pNode in this process announces every piece of a file to the seed's
 * tracker and serves them all corrupted. A `dfnode get` process asks it, finds each piece fails
 * verification against the seed's piece table, isolates it and takes the pieces from the seed: no byte
 * from the liar is kept and the file verifies.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PieceHasher, pieceSizeFor, PIECE_SIZE } from '../../src/mirror/piece-table.js';
import { runCli } from '../helpers/cli.js';
import { startSeedProc } from '../helpers/dfnode-proc.js';
import { sha256File } from '../helpers/digest.js';
import { getNodeFlags, startFileOrigin } from '../helpers/file-origin.js';
import { startLyingPiecePeer } from '../helpers/lying-piece-peer.js';
import { tempDir } from '../helpers/temp.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';

const TOKEN = 'get-liar-token';
const cleanups = cleanupsAfterEach();

describe('dfnode get and a lying peer', () => {
  it('isolates a peer whose pieces fail verification and gets the file from the seed', async () => {
    const { dir, cleanup } = await tempDir('dfnode-get-liar-');
    cleanups.push(cleanup);
    const origin = await startFileOrigin();
    cleanups.push(() => origin.close());
    const data = randomBytes(16 * PIECE_SIZE);
    origin.put('/f', data);
    const h = new PieceHasher(pieceSizeFor(data.length));
    h.update(data);
    const table = h.finish();
    const seed = await startSeedProc(dir, 'seed', ['--cluster-token', TOKEN], {
      DFNODE_P2P_SEED_ORIGINS: origin.base,
    });
    cleanups.push(() => seed.proc.stop());

    // the liar: every piece "held", every piece corrupt, listed by the tracker
    const { node: liar, stop } = await startLyingPiecePeer({
      dir,
      seed: seed.addr,
      token: TOKEN,
      data,
      table,
    });
    cleanups.push(stop);

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
