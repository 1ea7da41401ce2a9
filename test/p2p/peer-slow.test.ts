/**
 * Slow is not down, for peers as for seeds, in background fill: a holder whose uplink is shared by many sends
 * its bytes slowly. A fill run from it runs past its time limit while bytes keep coming; one that reaches
 * even the longer limit while bytes are still coming sends the range elsewhere without isolating the holder,
 * up to SLOW_TIMEOUTS_UNTIL_ISOLATED in a row. A holder that stalls (nothing for the idle limit, whether or
 * not it sent something first) is hung and isolated at once, and a read a container waits on keeps its
 * fixed limit and isolates a holder that misses it. Real HTTP holders on loopback that trickle.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { describe, expect, it } from 'vitest';
import type { BlobCache } from '../../src/cache/blob-cache.js';
import { Bitmap } from '../../src/cache/bitmap.js';
import { isSourceUnavailable, Priority } from '../../src/fetch/types.js';
import { PieceLayout } from '../../src/mirror/piece-table.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { Isolation } from '../../src/p2p/isolation.js';
import { PeerBlockSource, SLOW_TIMEOUTS_UNTIL_ISOLATED } from '../../src/p2p/peer-block-source.js';
import { PeerView, type Holder } from '../../src/p2p/peer-view.js';
import { cleanupsAfterEach } from '../helpers/cleanups.js';
import { LoopbackServers } from '../helpers/loopback.js';
import { trickle } from '../helpers/trickle.js';

const KiB = 1024;
const DIGEST = 'sha256:' + '6b'.repeat(32);
const DATA = Buffer.from(Array.from({ length: 64 * KiB }, (_, i) => (i * 7) & 0xff));
const PIECE = 8 * KiB;
// per-request limit: 400 ms + 8 KiB at 64 KiB/s = 525 ms; a fill run may go on to 2.1 s while bytes come
// (nothing for 400 ms: stalled)
const TIMEOUT_MS = 400;

/**
 * A holder that answers 200 and sends the range `chunk` bytes every 100 ms: 512 (5 KiB/s: 1.6 s a piece),
 * 256 (2.5 KiB/s: 3.2 s); 'stall': the first 512 bytes, then nothing.
 */
function trickler(mode: 512 | 256 | 'stall') {
  return (req: IncomingMessage, res: ServerResponse) => {
    const q = new URL(req.url ?? '/', 'http://x').searchParams;
    const offset = Number(q.get('offset'));
    const length = Number(q.get('length'));
    res.writeHead(200, { 'content-length': String(length) });
    res.flushHeaders();
    if (mode === 'stall') res.write(DATA.subarray(offset, offset + 512));
    else trickle(res, DATA.subarray(offset, offset + length), mode, 100);
  };
}

describe('a slow peer', () => {
  const cleanups = cleanupsAfterEach();
  const servers = new LoopbackServers();

  async function setup(mode: 512 | 256 | 'stall') {
    cleanups.push(() => servers.closeAll());
    const { addr } = await servers.serve(trickler(mode));
    const http = new HttpBlockClient('t');
    cleanups.push(() => http.close());
    const layout = new PieceLayout(DATA.length, PIECE);
    const view = new PeerView({ digest: DIGEST, size: DATA.length }, layout, {} as BlobCache);
    const holder: Holder = {
      id: 'A',
      address: addr,
      zone: '',
      load: 0,
      failures: 0,
      bits: Bitmap.fromBits(new Uint8Array(1).fill(0x0f), layout.units),
    };
    view.holders = [holder];
    const isolation = new Isolation();
    const failures: string[] = [];
    const slow: string[] = [];
    const src = new PeerBlockSource({
      view: () => view,
      refresh: () => undefined,
      http,
      isolation,
      reportFailure: (id) => failures.push(id),
      onSlow: (id) => slow.push(id),
      zone: '',
      timeoutMs: TIMEOUT_MS,
    });
    return { src, view, holder, isolation, failures, slow };
  }
  const signal = () => AbortSignal.timeout(20_000);

  const fill = { priority: Priority.Fill, planned: true };

  it('finishes a fill run past its time limit while bytes keep coming; the holder is not isolated', async () => {
    const { src, view, isolation, failures, slow } = await setup(512);
    const t0 = Date.now();
    const data = await src.fetch(view.blob, PIECE, PIECE, signal(), fill);
    // it took longer than the 525 ms limit (about 1.6 s at 5 KiB/s)
    expect(Date.now() - t0).toBeGreaterThan(525);
    expect(data.equals(DATA.subarray(PIECE, 2 * PIECE))).toBe(true);
    expect(isolation.isolated('A')).toBe(false);
    expect(failures).toEqual([]);
    expect(slow).toEqual([]);
  });

  it('a fill run too slow even for the longer limit goes elsewhere without isolating the holder, until it is slow too often', async () => {
    const { src, view, holder, isolation, failures, slow } = await setup(256);
    const run = () => src.fetch(view.blob, 0, PIECE, signal(), fill).catch((e) => e);
    for (let i = 1; i < SLOW_TIMEOUTS_UNTIL_ISOLATED; i++) {
      const e = await run();
      expect(isSourceUnavailable(e)).toBe(true);
      expect(String(e)).toMatch(/slow, not down/);
      expect(isolation.isolated('A')).toBe(false);
      expect(failures).toEqual([]);
      expect(view.holders).toEqual([holder]);
      expect(slow).toHaveLength(i);
      // fill runs are planned around it for a moment (this one asks again at once, as a planner would not)
      expect(src.isFull('A')).toBe(true);
      await new Promise((r) => setTimeout(r, 600));
    }
    const last = await run();
    expect(isSourceUnavailable(last)).toBe(true);
    expect(String(last)).not.toMatch(/slow, not down/);
    expect(isolation.isolated('A')).toBe(true);
    expect(failures).toEqual(['A']);
    expect(view.holders).toEqual([]);
    expect(slow).toHaveLength(SLOW_TIMEOUTS_UNTIL_ISOLATED - 1);
  });

  it('a read a container waits on keeps its fixed limit: a slow holder that misses it is isolated', async () => {
    const { src, view, isolation, failures, slow } = await setup(512);
    const t0 = Date.now();
    const e = await src.fetch(view.blob, 0, PIECE, signal(), { priority: Priority.Blocked }).catch((x) => x);
    expect(Date.now() - t0).toBeLessThan(1500);
    expect(isSourceUnavailable(e)).toBe(true);
    expect(isolation.isolated('A')).toBe(true);
    expect(failures).toEqual(['A']);
    expect(slow).toEqual([]);
  });

  it('a holder that sends a little and then nothing is hung: isolated at once, fill run or not', async () => {
    const { src, view, isolation, failures, slow } = await setup('stall');
    const e = await src.fetch(view.blob, 0, PIECE, signal(), fill).catch((x) => x);
    expect(isSourceUnavailable(e)).toBe(true);
    expect(String(e)).toMatch(/nothing received|no answer/);
    expect(isolation.isolated('A')).toBe(true);
    expect(failures).toEqual(['A']);
    expect(slow).toEqual([]);
  });
});
