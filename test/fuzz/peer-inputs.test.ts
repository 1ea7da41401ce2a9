/**
 * Property tests of what peers send: the block request parser (URL, query, Range header), the block
 * server over loopback, and the tracker's announce/lookup handling. No input makes them throw anything but
 * a DfError, every answer is well formed, and what the tracker holds stays within its limits.
 * DFNODE_FUZZ_RUNS sets the number of cases (default 200; a long campaign raises it).
 */
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { BlockServer, type BlobProvider } from '../../src/p2p/block-server.js';
import { parseBlockRequest } from '../../src/p2p/block-request.js';
import { HttpBlockClient } from '../../src/p2p/http-block-client.js';
import { TrackerState, type AnnounceMsg, type LookupMsg } from '../../src/p2p/tracker-state.js';
import { manualTimers } from '../helpers/manual-timers.js';
import { rawExchange, statusOf } from '../helpers/raw-http.js';

const RUNS = Math.max(1, Number(process.env.DFNODE_FUZZ_RUNS) || 200);
const DIGEST = 'sha256:' + 'ab'.repeat(32);
const MAX = 1 << 20;

/** Numbers as a peer might write them: valid, negative, huge, fractional, exponent, hex, garbage. */
const numberText = fc.oneof(
  fc.nat({ max: 1 << 22 }).map(String),
  fc.integer().map(String),
  fc.constantFrom(
    '',
    '-0',
    '1e3',
    '0x10',
    'NaN',
    'Infinity',
    '1.5',
    ' 1',
    '9007199254740993',
    '9'.repeat(40),
  ),
  fc.string({ maxLength: 12 }),
);
const path = fc.oneof(
  fc.constant(`/blobs/${DIGEST}`),
  fc.constantFrom('/', '//', '/blobs/', '/blobs//', '/%zz', '//evil/blobs/x', `/blobs/${DIGEST}/x`, '*'),
  fc.string({ maxLength: 80 }),
  fc.string({ maxLength: 40, unit: 'binary' }),
);
const query = fc
  .array(
    fc.tuple(
      fc.constantFrom('offset', 'length', 'size', 'repo', 'defer', 'x', '%zz', ''),
      fc.oneof(numberText, fc.string({ maxLength: 20 })),
    ),
    { maxLength: 5 },
  )
  .map((kv) => (kv.length ? '?' + kv.map(([k, v]) => `${k}=${v}`).join('&') : ''));
const rangeHeader = fc.option(
  fc.oneof(
    fc.tuple(numberText, numberText).map(([a, b]) => `bytes=${a}-${b}`),
    fc.string({ maxLength: 40 }),
  ),
  { nil: undefined },
);
const method = fc.oneof(
  fc.constantFrom('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'get'),
  fc.string({ maxLength: 8 }),
);

describe('block request parser (property)', () => {
  it('never throws and answers a sane range or an error status', () => {
    fc.assert(
      fc.property(
        method,
        fc.tuple(path, query).map(([p, q]) => p + q),
        rangeHeader,
        (m, url, range) => {
          const r = parseBlockRequest(m, url, range, MAX);
          if (!r.ok) {
            expect([400, 404, 405, 413]).toContain(r.status);
            return;
          }
          expect(r.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
          expect(Number.isSafeInteger(r.offset) && r.offset >= 0).toBe(true);
          expect(Number.isSafeInteger(r.length) && r.length > 0 && r.length <= MAX).toBe(true);
          expect(Number.isSafeInteger(r.offset + r.length)).toBe(true);
          if (r.size !== undefined) expect(Number.isSafeInteger(r.size) && r.size >= 0).toBe(true);
        },
      ),
      { numRuns: RUNS },
    );
  });
});

describe('block server over loopback (property)', () => {
  const DATA = Buffer.alloc(8192, 3);
  const provider: BlobProvider = {
    get: async (d) =>
      d === DIGEST ? { size: DATA.length, read: async (o, l) => DATA.subarray(o, o + l) } : undefined,
  };
  let server: BlockServer;
  let port: number;
  beforeAll(async () => {
    server = new BlockServer({ provider, clusterToken: 'tok', maxRangeBytes: MAX });
    const a = await server.listen('127.0.0.1:0');
    port = Number(a.slice(a.lastIndexOf(':') + 1));
  });
  afterAll(() => server.close());

  it('answers every request with a status, and still serves afterwards', async () => {
    const target = fc.tuple(path, query).map(([p, q]) => (p + q).replace(/[\s\0]/g, '') || '/');
    await fc.assert(
      fc.asyncProperty(method, target, rangeHeader, fc.boolean(), async (m, url, range, token) => {
        const headers = [
          token ? 'x-dfnode-cluster-token: tok' : '',
          range === undefined ? '' : `Range: ${range.replace(/[\r\n]/g, '')}`,
        ];
        const text = [
          `${m} ${url} HTTP/1.1`,
          'Host: p',
          'Connection: close',
          ...headers.filter(Boolean),
          '',
          '',
        ].join('\r\n');
        const status = statusOf(await rawExchange(port, Buffer.from(text, 'latin1')));
        expect([200, 206, 400, 401, 404, 405, 413, 416, 431]).toContain(status);
      }),
      { numRuns: Math.min(RUNS, 300) },
    );
    const client = new HttpBlockClient('tok');
    try {
      expect(
        (await client.get(`127.0.0.1:${port}`, DIGEST, 1, 100, AbortSignal.timeout(10_000))).length,
      ).toBe(100);
    } finally {
      await client.close();
    }
  });
});

describe('tracker announce and lookup (property)', () => {
  const limits = {
    maxBlobs: 4,
    maxPeersPerBlob: 6,
    maxBitmapBytes: 4096,
    maxPeerIds: 16,
    maxFailureEntries: 32,
    maxHolders: 5,
    maxUnits: 1 << 16,
  };
  const digest = fc.oneof(
    fc.constantFrom(DIGEST, 'sha256:' + 'cd'.repeat(32), 'sha256:' + '01'.repeat(32)),
    fc.string({ maxLength: 20 }),
  );
  const peerId = fc.oneof(
    fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'),
    fc.string({ maxLength: 10 }),
  );
  const units = fc.oneof(
    fc.integer({ min: -2, max: 100 }),
    fc.constantFrom(2 ** 32 - 1, 2 ** 22, 1 << 16, (1 << 16) + 1, NaN, 1.5, Infinity),
  );
  const unitArray = fc.array(fc.oneof(fc.integer({ min: -1, max: 120 }), fc.double()), { maxLength: 40 });
  const garbage = fc.oneof(
    fc.constant(undefined),
    fc.constant(null),
    fc.string({ maxLength: 4 }),
    fc.integer(),
  );
  const announce = fc.record({
    blob: digest,
    units,
    peer_id: peerId,
    address: fc.oneof(
      fc.constantFrom('10.0.0.1:1', '10.0.0.2:2', 'h:3', '[::1]:4'),
      fc.string({ maxLength: 12 }),
    ),
    zone: fc.oneof(fc.constantFrom('', 'z1'), fc.string({ maxLength: 10 })),
    load: fc.oneof(fc.nat(), fc.double()),
    full: fc.boolean(),
    bitmap: fc.oneof(fc.uint8Array({ maxLength: 20 }), fc.uint8Array({ minLength: 100, maxLength: 200 })),
    added: fc.oneof(unitArray, garbage),
    leave: fc.boolean(),
    failed_peers: fc.oneof(fc.array(peerId, { maxLength: 80 }), garbage),
  });
  const lookup = fc.record({
    blob: digest,
    peer_id: peerId,
    zone: fc.string({ maxLength: 4 }),
    want: fc.oneof(unitArray, fc.array(fc.nat(200), { minLength: 4097, maxLength: 4100 }), garbage),
    max_peers: fc.oneof(fc.nat(), fc.constantFrom(-1, 2 ** 31, NaN)),
  });
  const step = fc.oneof(
    fc.record({
      kind: fc.constant('announce' as const),
      m: announce,
      source: fc.constantFrom(undefined, 'h1', 'h2'),
    }),
    fc.record({ kind: fc.constant('lookup' as const), m: lookup }),
    fc.record({ kind: fc.constant('tick' as const), ms: fc.nat(40_000) }),
  );

  it('throws only DfErrors, answers well-formed lookups and stays within its limits', () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 40 }), (steps) => {
        const c = manualTimers();
        const t = new TrackerState({
          timers: c.timers,
          limits,
          seedBits: (b) => (b === DIGEST ? new Uint8Array(3) : undefined),
        });
        for (const s of steps) {
          try {
            if (s.kind === 'tick') c.advance(s.ms);
            else if (s.kind === 'announce') t.announce(s.m as unknown as AnnounceMsg, s.source);
            else {
              const a = t.lookup(s.m as unknown as LookupMsg);
              expect(a.holders.length).toBeLessThanOrEqual(limits.maxHolders);
              for (const h of a.holders) {
                expect(h.bitmap.length).toBe(Math.ceil(a.units / 8));
                expect([0, h.bitmap.length]).toContain(h.pending.length);
              }
              if (s.m.blob === DIGEST && a.units) expect(Math.ceil(a.units / 8)).toBe(3);
            }
          } catch (e) {
            if (!(e instanceof DfError)) throw e;
            expect(['INVALID_ARGUMENT', 'FORBIDDEN', 'NO_SPACE']).toContain(e.code);
          }
          const size = t.size;
          expect(size.blobs).toBeLessThanOrEqual(limits.maxBlobs);
          expect(size.bitmapBytes).toBeLessThanOrEqual(limits.maxBitmapBytes);
          expect(size.ids).toBeLessThanOrEqual(limits.maxPeerIds);
          expect(size.failures).toBeLessThanOrEqual(limits.maxFailureEntries);
          expect(size.peers).toBeLessThanOrEqual(limits.maxBlobs * limits.maxPeersPerBlob);
        }
      }),
      { numRuns: RUNS },
    );
  });
});
