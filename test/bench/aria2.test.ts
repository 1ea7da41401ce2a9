import { describe, expect, it } from 'vitest';
import {
  aria2Args,
  mktorrentArgs,
  parseCompleteLine,
  parseInfoHash,
  parseScrape,
  parseUploadLength,
  pieceLengthExponent,
  scrapeUrl,
} from '../../bench/lib/aria2.js';

const HASH = 'a837af9ba6b0656e6e800381241fc90922ac52ce';

describe('bench/lib/aria2', () => {
  it('offers 256 KiB and 1 MiB pieces only', () => {
    expect(pieceLengthExponent(256 * 1024)).toBe(18);
    expect(pieceLengthExponent(1024 * 1024)).toBe(20);
    expect(() => pieceLengthExponent(512 * 1024)).toThrow(/256 KiB or 1024 KiB/);
    expect(mktorrentArgs('/c', '/t.torrent', 'http://t/announce', 1 << 20)).toEqual([
      '-d',
      '-l',
      '20',
      '-a',
      'http://t/announce',
      '-o',
      '/t.torrent',
      '/c',
    ]);
  });

  it('reads the info hash from aria2c --show-files', () => {
    const out =
      '*** BitTorrent File Information ***\nMode: single\nAnnounce:\n http://10.99.0.3:6969/announce\n' +
      `Info Hash: ${HASH.toUpperCase()}\nPiece Length: 1.0MiB\n`;
    expect(parseInfoHash(out)).toBe(HASH);
    expect(() => parseInfoHash('Mode: single\n')).toThrow(/no info hash/);
  });

  it('builds the scrape URL and reads the counts of a bencoded scrape answer', () => {
    expect(scrapeUrl('10.77.0.9', HASH)).toBe(
      'http://10.77.0.9:6969/scrape?info_hash=%a8%37%af%9b%a6%b0%65%6e%6e%80%03%81%24%1f%c9%09%22%ac%52%ce',
    );
    expect(() => scrapeUrl('10.77.0.9', 'xyz')).toThrow(/not an info hash/);
    const raw = Buffer.from(HASH, 'hex').toString('latin1');
    const body = `d5:filesd20:${raw}d8:completei1e10:downloadedi0e10:incompletei3eeee`;
    expect(parseScrape(body)).toEqual({ complete: 1, incomplete: 3 });
    expect(parseScrape('d5:filesdee')).toBeUndefined();
  });

  it('parses the completion hook line and only that', () => {
    expect(parseCompleteLine('bt-complete 686fda724c80a81b 1 /tmp/x/layers')).toEqual({
      gid: '686fda724c80a81b',
      files: 1,
      path: '/tmp/x/layers',
    });
    expect(parseCompleteLine('[#686fda SEED(0.0) CN:0 SD:0]')).toBeUndefined();
  });

  it('sums the upload counters of aria2.tellActive and reports RPC errors', () => {
    const ok = JSON.stringify({
      id: 'bench',
      jsonrpc: '2.0',
      result: [
        { gid: 'a', uploadLength: '1048576' },
        { gid: 'b', uploadLength: '5' },
      ],
    });
    expect(parseUploadLength(ok)).toBe(1048581);
    expect(() => parseUploadLength(JSON.stringify({ error: { code: 1, message: 'Unauthorized' } }))).toThrow(
      /Unauthorized/,
    );
  });

  it('keeps aria2c inside the topology: no DHT, no LPD, bound to the host address', () => {
    const seeder = aria2Args({ torrent: '/t', dir: '/d', ip: '10.77.0.1', role: 'seeder', watchPid: 42 });
    for (const a of [
      '--enable-dht=false',
      '--enable-dht6=false',
      '--bt-enable-lpd=false',
      '--interface=10.77.0.1',
    ])
      expect(seeder).toContain(a);
    expect(seeder).toContain('--seed-ratio=0.0');
    expect(seeder).toContain('--stop-with-process=42');
    expect(seeder.at(-1)).toBe('/t');
    const leecher = aria2Args({ torrent: '/t', dir: '/d', ip: '10.77.0.5', role: 'leecher', hook: '/h.sh' });
    expect(leecher).toContain('--on-bt-download-complete=/h.sh');
    expect(leecher).toContain('--seed-ratio=0.0');
    expect(leecher).not.toContain('--enable-rpc=true');
    const exiting = aria2Args({
      torrent: '/t',
      dir: '/d',
      ip: '10.77.0.5',
      role: 'leecher',
      hook: '/h',
      exitWhenDone: true,
    });
    expect(exiting).toContain('--seed-time=0');
    expect(() => aria2Args({ torrent: '/t', dir: '/d', ip: '10.77.0.5', role: 'leecher' })).toThrow(/hook/);
  });
});
