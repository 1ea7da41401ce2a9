// aria2c, opentracker and mktorrent for bench/p2p's BitTorrent mode: their command lines and parsers of what
// they print. Pure functions; bench/lib/bt-swarm.ts runs the tools inside a NetnsTopology.

export const TRACKER_PORT = 6969;
export const BT_PORT = 6881;
/** aria2c's JSON-RPC port on the seeder's loopback (its upload counter). */
export const RPC_PORT = 6800;
/** What the leechers' completion hook prints: `bt-complete GID FILES PATH`. */
export const COMPLETE_HOOK = '#!/bin/sh\necho "bt-complete $1 $2 $3"\n';

/** mktorrent's `-l`: log2 of the piece length. Only 256 KiB and 1 MiB pieces are offered. */
export function pieceLengthExponent(bytes: number): number {
  if (bytes !== 256 * 1024 && bytes !== 1024 * 1024)
    throw new Error(`BitTorrent piece size ${bytes} B: use 256 KiB or 1024 KiB`);
  return Math.log2(bytes);
}

export function announceUrl(trackerIp: string): string {
  return `http://${trackerIp}:${TRACKER_PORT}/announce`;
}

/** The tracker's scrape URL for one torrent (the info hash as percent-encoded raw bytes). */
export function scrapeUrl(trackerIp: string, infoHash: string): string {
  if (!/^[0-9a-f]{40}$/.test(infoHash)) throw new Error(`not an info hash: ${infoHash}`);
  return `http://${trackerIp}:${TRACKER_PORT}/scrape?info_hash=${infoHash.replace(/../g, '%$&')}`;
}

/** `opentracker` bound to `ip` (TCP and UDP), chrooted into `dir`, announcing only the hashes of `dir/whitelist`. */
export function opentrackerArgs(ip: string, dir: string, whitelist: string): string[] {
  const port = String(TRACKER_PORT);
  return ['-i', ip, '-p', port, '-P', port, '-d', dir, '-w', whitelist];
}

/** `mktorrent`: a torrent of `content` (file or directory) announcing to `announce`, no creation date. */
export function mktorrentArgs(content: string, out: string, announce: string, pieceBytes: number): string[] {
  return ['-d', '-l', String(pieceLengthExponent(pieceBytes)), '-a', announce, '-o', out, content];
}

export interface Aria2Options {
  torrent: string;
  /** Download directory (the seeder's holds the content already). */
  dir: string;
  /** The namespace's address: every socket is bound to it. */
  ip: string;
  role: 'seeder' | 'leecher';
  /** Leecher: executable printing COMPLETE_HOOK's line, run when the download is complete. */
  hook?: string;
  /** Leecher: exit when complete (`--seed-time=0`) instead of seeding until stopped. */
  exitWhenDone?: boolean;
  /** aria2c stops by itself when this process is gone (the benchmark: no orphan left behind). */
  watchPid?: number;
}

/**
 * aria2c's arguments: no DHT, no local peer discovery (nothing leaves the topology: peers come from the
 * tracker and from peer exchange among its peers), IPv4 on the namespace's address only, no console noise.
 * The seeder seeds its content unverified (it is the registry's blob, checked by digest) forever and answers
 * JSON-RPC on its loopback; a leecher seeds until stopped unless exitWhenDone.
 */
export function aria2Args(o: Aria2Options): string[] {
  const a = [
    '--enable-dht=false',
    '--enable-dht6=false',
    '--bt-enable-lpd=false',
    '--enable-peer-exchange=true',
    '--disable-ipv6=true',
    `--interface=${o.ip}`,
    `--listen-port=${BT_PORT}`,
    `--dir=${o.dir}`,
    '--file-allocation=none',
    '--console-log-level=warn',
    '--show-console-readout=false',
    '--summary-interval=0',
    '--download-result=hide',
    '--enable-color=false',
  ];
  if (o.watchPid) a.push(`--stop-with-process=${o.watchPid}`);
  if (o.role === 'seeder')
    a.push(
      '--bt-seed-unverified=true',
      '--seed-ratio=0.0',
      '--enable-rpc=true',
      `--rpc-listen-port=${RPC_PORT}`,
    );
  else {
    if (!o.hook) throw new Error('an aria2c leecher needs a completion hook');
    a.push(`--on-bt-download-complete=${o.hook}`, o.exitWhenDone ? '--seed-time=0' : '--seed-ratio=0.0');
  }
  a.push(o.torrent);
  return a;
}

/** The info hash (lowercase hex) from `aria2c --show-files TORRENT`. */
export function parseInfoHash(showFiles: string): string {
  const m = /^Info Hash: ([0-9a-fA-F]{40})\s*$/m.exec(showFiles);
  if (!m) throw new Error(`no info hash in aria2c --show-files output:\n${showFiles.slice(0, 2000)}`);
  return m[1]!.toLowerCase();
}

/** Seeders and leechers in a tracker's bencoded scrape answer for one torrent; undefined if it has none. */
export function parseScrape(body: string): { complete: number; incomplete: number } | undefined {
  const c = /8:completei(\d+)e/.exec(body);
  const i = /10:incompletei(\d+)e/.exec(body);
  if (!c || !i) return undefined;
  return { complete: Number(c[1]), incomplete: Number(i[1]) };
}

/** The completion hook's line: the download's GID, its file count and path; undefined for other lines. */
export function parseCompleteLine(line: string): { gid: string; files: number; path: string } | undefined {
  const m = /^bt-complete ([0-9a-f]+) (\d+) (.+)$/.exec(line);
  return m ? { gid: m[1]!, files: Number(m[2]), path: m[3]! } : undefined;
}

/** JSON-RPC request for every active download's upload counter. */
export const TELL_ACTIVE = JSON.stringify({
  jsonrpc: '2.0',
  id: 'bench',
  method: 'aria2.tellActive',
  params: [['gid', 'uploadLength']],
});

/** Bytes uploaded by all active downloads, from aria2.tellActive's answer (TELL_ACTIVE). */
export function parseUploadLength(json: string): number {
  const j = JSON.parse(json) as { result?: { uploadLength: string }[]; error?: { message: string } };
  if (!j.result) throw new Error(`aria2.tellActive failed: ${j.error?.message ?? json.slice(0, 200)}`);
  return j.result.reduce((a, d) => a + Number(d.uploadLength), 0);
}
