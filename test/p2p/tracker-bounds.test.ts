/**
 * What a cluster member can make the tracker hold: unit counts, bitmaps, want lists, failure reports,
 * peers per blob, blobs, bitmap bytes and peer ids all have a bound, and a peer id stays with the address
 * (and network host) that first announced it. Then the same over the real gRPC listener on loopback.
 */
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { serveTracker, TrackerClient } from '../../src/p2p/tracker-service.js';
import { TrackerState, type AnnounceMsg } from '../../src/p2p/tracker-state.js';
import type { Timers } from '../../src/util/timers.js';

function clock(): Timers & { t: number } {
  const c = { t: 1000, now: () => c.t, setTimeout: () => 0, clearTimeout: () => undefined };
  return c;
}
const digest = (i: number) => 'sha256:' + i.toString(16).padStart(64, '0');
const BLOB = digest(1);

const announce = (m: Partial<AnnounceMsg>): AnnounceMsg => ({
  blob: BLOB,
  units: 16,
  peer_id: 'p1',
  address: '10.0.0.1:7700',
  zone: '',
  load: 0,
  full: true,
  bitmap: new Uint8Array(2),
  added: [],
  leave: false,
  failed_peers: [],
  ...m,
});

const code = (fn: () => unknown): string | undefined => {
  try {
    fn();
    return undefined;
  } catch (e) {
    return e instanceof DfError ? e.code : `not a DfError: ${String(e)}`;
  }
};

describe('tracker bounds', () => {
  it('refuses a unit count over the limit without allocating a bitmap for it', () => {
    const t = new TrackerState({ timers: clock() });
    for (let i = 0; i < 4; i++)
      expect(
        code(() =>
          t.announce(announce({ peer_id: `p${i}`, units: 2 ** 32 - 1, bitmap: new Uint8Array(100) })),
        ),
      ).toBe('INVALID_ARGUMENT');
    expect(code(() => t.announce(announce({ units: 2 ** 22 + 1, full: false })))).toBe('INVALID_ARGUMENT');
    for (const units of [0, -1, 1.5, NaN, Infinity])
      expect(code(() => t.announce(announce({ units })))).toBe('INVALID_ARGUMENT');
    expect(t.size.bitmapBytes).toBe(0);
    expect(t.size.peers).toBe(0);
  });

  it("takes the seed's unit count when the seed holds the blob, else the first announce's", () => {
    const seed = new Uint8Array(2); // the seed holds a blob of 9..16 units
    const t = new TrackerState({ timers: clock(), seedBits: (b) => (b === BLOB ? seed : undefined) });
    expect(code(() => t.announce(announce({ units: 1000, bitmap: new Uint8Array(125) })))).toBe(
      'INVALID_ARGUMENT',
    );
    t.announce(announce({ units: 16 }));
    // another blob the seed does not hold: the first count stands, a different one is refused
    const other = digest(2);
    t.announce(announce({ blob: other, units: 100, bitmap: new Uint8Array(13) }));
    expect(
      code(() =>
        t.announce(announce({ blob: other, peer_id: 'p2', units: 200, bitmap: new Uint8Array(25) })),
      ),
    ).toBe('INVALID_ARGUMENT');
    expect(t.lookup({ blob: other, peer_id: 'x', zone: '', want: [], max_peers: 8 }).units).toBe(100);
    expect(t.peers(other)).toEqual(['p1']);
  });

  it('replaces a count that disagrees with the seed once the seed holds the blob', () => {
    const seed: { bits?: Uint8Array } = {};
    const t = new TrackerState({ timers: clock(), seedBits: () => seed.bits });
    t.announce(
      announce({ peer_id: 'liar', address: '10.0.0.9:7700', units: 800, bitmap: new Uint8Array(100) }),
    );
    seed.bits = new Uint8Array(2);
    t.announce(announce({ units: 16 }));
    expect(t.peers(BLOB)).toEqual(['p1']);
    expect(t.size.bitmapBytes).toBe(2);
  });

  it('refuses a bitmap whose length does not match the unit count', () => {
    const t = new TrackerState({ timers: clock() });
    expect(code(() => t.announce(announce({ units: 16, bitmap: new Uint8Array(1 << 20) })))).toBe(
      'INVALID_ARGUMENT',
    );
    expect(code(() => t.announce(announce({ units: 16, bitmap: new Uint8Array(1) })))).toBe(
      'INVALID_ARGUMENT',
    );
    expect(t.size.peers).toBe(0);
  });

  it('caps want lists, added lists and the holders of one answer', () => {
    const t = new TrackerState({ timers: clock(), limits: { maxHolders: 4 } });
    for (let i = 0; i < 10; i++)
      t.announce(
        announce({ peer_id: `p${i}`, address: `10.0.0.${i}:7700`, bitmap: Uint8Array.from([1, 0]) }),
      );
    const want = Array.from({ length: 4097 }, (_, i) => i % 16);
    expect(code(() => t.lookup({ blob: BLOB, peer_id: 'x', zone: '', want, max_peers: 8 }))).toBe(
      'INVALID_ARGUMENT',
    );
    expect(
      t.lookup({ blob: BLOB, peer_id: 'x', zone: '', want: [0], max_peers: 2 ** 31 }).holders,
    ).toHaveLength(4);
    expect(
      code(() => t.announce(announce({ full: false, added: Array.from({ length: 17 }, () => 1) }))),
    ).toBe('INVALID_ARGUMENT');
  });

  it('bounds failure reports per announce and in all', () => {
    const t = new TrackerState({ timers: clock(), limits: { maxFailureEntries: 100 } });
    const failed = Array.from({ length: 10_000 }, (_, i) => `f${i}`);
    t.announce(announce({ failed_peers: failed }));
    expect(t.size.failures).toBe(64);
    for (let k = 0; k < 5; k++)
      t.announce(announce({ failed_peers: failed.slice(64 * (k + 1), 64 * (k + 2)) }));
    expect(t.size.failures).toBe(100);
    // a report of garbage is ignored
    t.announce(announce({ failed_peers: ['', 'x'.repeat(1000), 'a b'] }));
    expect(t.size.failures).toBe(100);
  });

  it('bounds the peers of a blob and keeps the ones that announce: the silent ones go first', () => {
    const c = clock();
    const t = new TrackerState({ timers: c, peerTtlMs: 1000, limits: { maxPeersPerBlob: 3 } });
    for (let i = 0; i < 3; i++) t.announce(announce({ peer_id: `p${i}`, address: `10.0.0.${i}:7700` }));
    const flood = () => t.announce(announce({ peer_id: 'new', address: '10.0.0.9:7700' }));
    expect(code(flood)).toBe('NO_SPACE');
    expect(t.peers(BLOB)).toEqual(['p0', 'p1', 'p2']);
    c.t += 600;
    t.announce(announce({ peer_id: 'p0', address: '10.0.0.0:7700', full: false }));
    c.t += 600; // p1 and p2 silent for 1200 ms
    flood();
    expect(t.peers(BLOB).sort()).toEqual(['new', 'p0']);
  });

  it('bounds the blobs tracked and the bytes of bitmaps held', () => {
    const c = clock();
    const t = new TrackerState({ timers: c, peerTtlMs: 1000, limits: { maxBlobs: 2, maxBitmapBytes: 10 } });
    t.announce(announce({ blob: digest(1) }));
    t.announce(announce({ blob: digest(2) }));
    expect(code(() => t.announce(announce({ blob: digest(3) })))).toBe('NO_SPACE');
    expect(t.size.blobs).toBe(2);
    expect(
      code(() =>
        t.announce(announce({ blob: digest(1), peer_id: 'big', units: 64, bitmap: new Uint8Array(8) })),
      ),
    ).toBe('INVALID_ARGUMENT'); // the blob has 16 units here
    for (let i = 2; i < 5; i++) t.announce(announce({ blob: digest(1), peer_id: `p${i}` }));
    expect(t.size.bitmapBytes).toBe(10);
    expect(code(() => t.announce(announce({ blob: digest(2), peer_id: 'p9' })))).toBe('NO_SPACE');
    c.t += 2000;
    t.announce(announce({ blob: digest(3) }));
    expect(t.size).toMatchObject({ blobs: 1, peers: 1, bitmapBytes: 2 });
  });

  it('binds a peer id to the address and host that first announced it, until it falls silent', () => {
    const c = clock();
    const t = new TrackerState({ timers: c, peerTtlMs: 1000 });
    t.announce(announce({ peer_id: 'p1', address: '10.0.0.1:7700' }), '10.0.0.1');
    expect(code(() => t.announce(announce({ peer_id: 'p1', address: '10.0.0.66:7700' }), '10.0.0.66'))).toBe(
      'FORBIDDEN',
    );
    // the right address claimed from another host
    expect(code(() => t.announce(announce({ peer_id: 'p1', address: '10.0.0.1:7700' }), '10.0.0.66'))).toBe(
      'FORBIDDEN',
    );
    expect(code(() => t.announce(announce({ peer_id: 'p1', leave: true }), '10.0.0.66'))).toBe('FORBIDDEN');
    expect(t.lookup({ blob: BLOB, peer_id: 'x', zone: '', want: [], max_peers: 8 }).holders).toHaveLength(0);
    expect(t.peers(BLOB)).toEqual(['p1']);
    c.t += 1500;
    t.announce(announce({ peer_id: 'p1', address: '10.0.0.66:7700' }), '10.0.0.66');
  });

  it('checks ids, addresses, zones and blobs', () => {
    const t = new TrackerState({ timers: clock() });
    for (const bad of [
      { peer_id: '' },
      { peer_id: 'x'.repeat(129) },
      { peer_id: 'a b' },
      { peer_id: 'é' },
      { address: '' },
      { address: 'host' },
      { address: 'host:0' },
      { address: 'host:70000' },
      { address: 'a/b:1' },
      { address: 'h'.repeat(300) + ':1' },
      { zone: 'z'.repeat(129) },
      { zone: 'a\nb' },
      { blob: 'sha256:xyz' },
      { blob: '' },
    ])
      expect(
        code(() => t.announce(announce(bad))),
        JSON.stringify(bad).slice(0, 60),
      ).toBe('INVALID_ARGUMENT');
    t.announce(announce({ address: '[::1]:7700', zone: 'rack 1' }));
    expect(code(() => t.lookup({ blob: 'nope', peer_id: 'x', zone: '', want: [], max_peers: 1 }))).toBe(
      'INVALID_ARGUMENT',
    );
  });
});

describe('tracker gRPC listener: hostile calls', () => {
  it('answers malformed and oversized calls with an error, survives garbage bytes, then serves', async () => {
    const t = new TrackerState();
    const srv = await serveTracker(t, '127.0.0.1:0', 'tok');
    const client = new TrackerClient(srv.address, 'tok', 5000);
    const port = Number(srv.address.slice(srv.address.lastIndexOf(':') + 1));
    try {
      await expect(
        client.announce(announce({ units: 2 ** 32 - 1, bitmap: new Uint8Array(100) })),
      ).rejects.toThrow(/units must be an integer/);
      await expect(
        client.lookup({ blob: BLOB, want: Array.from({ length: 5000 }, (_, i) => i) }),
      ).rejects.toThrow(/want has 5000 units/);
      // over the 2 MiB request limit
      await expect(
        client.announce(announce({ units: 2 ** 22, bitmap: new Uint8Array(3 << 20) })),
      ).rejects.toThrow(DfError);
      await expect(new TrackerClient(srv.address, 'wrong', 5000).lookup({ blob: BLOB })).rejects.toThrow(
        /cluster token/,
      );
      for (const bytes of [
        'GET / HTTP/1.1\r\n\r\n',
        Buffer.alloc(4096, 0xff),
        'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0',
      ]) {
        await new Promise<void>((resolve) => {
          const s = connect(port, '127.0.0.1', () => s.end(bytes));
          s.on('error', () => resolve());
          s.on('close', () => resolve());
          s.resume();
          setTimeout(() => {
            s.destroy();
            resolve();
          }, 2000).unref();
        });
      }
      const r = await client.announce(announce({ address: '127.0.0.1:7700' }));
      expect(r.need_full).toBe(false);
      const a = await client.lookup({ blob: BLOB, peer_id: 'x', want: [], max_peers: 4 });
      expect(a.units).toBe(16);
      expect(a.peers).toBe(1);
    } finally {
      client.close();
      await srv.stop();
    }
  });
});
