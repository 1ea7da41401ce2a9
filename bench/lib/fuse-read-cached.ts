// bench/fuse-read's cached-read part, apart from its run loop: which files it reads, warming the backing
// files, the samples, and the report (medians per mode and target, dfnode's ratios to squashfuse and the
// plain directory, the table).
import { lstat, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { formatTable, median, run } from './measure.js';
import { describeDrop, type DropMethod } from './page-cache.js';

/** Regular files of at least `min` bytes under `root` (one path per inode), as paths relative to root. */
export async function largeFiles(root: string, min: number): Promise<{ rel: string[]; bytes: number }> {
  const seen = new Set<string>();
  const rel: string[] = [];
  let bytes = 0;
  const walk = async (dir: string, prefix: string) => {
    for (const e of await readdir(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      const r = prefix ? `${prefix}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(p, r);
      else if (e.isFile()) {
        const s = await lstat(p);
        const key = `${s.dev}:${s.ino}`;
        if (s.size >= min && !seen.has(key)) {
          seen.add(key);
          rel.push(r);
          bytes += s.size;
        }
      }
    }
  };
  await walk(root, '');
  rel.sort();
  return { rel, bytes };
}

/** Reads every file of a directory tree once (warms the page cache for backing files). */
export async function warmTree(paths: string[]): Promise<void> {
  for (const p of paths) {
    const s = await stat(p);
    if (s.isFile()) await run('cat', [p]).catch(() => undefined);
    else await run('sh', ['-c', 'find "$1" -xdev -type f -exec cat {} + > /dev/null', 'sh', p]);
  }
}

export interface ReadSample {
  seconds: number;
  bytes: number;
  mbPerSec: number;
  /** CPU seconds of the serving process (all threads) during the read; NaN for the plain directory. */
  serverCpu: number;
  /** CPU seconds of the serving process's main thread (dfnode: the JS thread). */
  mainCpu: number;
  readerCpu: number;
}

export interface FindSample {
  seconds: number;
  entries: number;
  serverCpu: number;
}

export interface CachedRuns {
  modes: readonly string[];
  /** Target names, in table order; dfTargets are the dfnode ones (compared with squashfuse and plain). */
  targets: string[];
  dfTargets: string[];
  /** Samples by `${mode}/${target}`. */
  reads: Record<string, ReadSample[]>;
  finds: Record<string, FindSample[]>;
  drops: Set<DropMethod>;
  files: number;
  bytes: number;
  minSize: number;
  runs: number;
}

/** Writes the cached-read table and ratios to `out`; returns them for the JSON line. */
export function reportCached(
  out: NodeJS.WritableStream,
  o: CachedRuns,
): { agg: Record<string, Record<string, number>>; ratios: Record<string, number>; pageCache: string } {
  const agg: Record<string, Record<string, number>> = {};
  for (const mode of o.modes)
    for (const t of o.targets) {
      const key = `${mode}/${t}`;
      const rs = o.reads[key]!;
      const fs = o.finds[key]!;
      const secs = median(rs.map((x) => x.seconds));
      agg[key] = {
        readSeconds: +secs.toFixed(3),
        readMBps: +median(rs.map((x) => x.mbPerSec)).toFixed(1),
        serverCpuSeconds: +median(rs.map((x) => x.serverCpu)).toFixed(2),
        serverCpuPct: +median(rs.map((x) => (100 * x.serverCpu) / x.seconds)).toFixed(0),
        mainThreadCpuPct: +median(rs.map((x) => (100 * x.mainCpu) / x.seconds)).toFixed(0),
        readerCpuSeconds: +median(rs.map((x) => x.readerCpu)).toFixed(2),
        findSeconds: +median(fs.map((x) => x.seconds)).toFixed(3),
        findEntries: median(fs.map((x) => x.entries)),
        findServerCpuSeconds: +median(fs.map((x) => x.serverCpu)).toFixed(2),
      };
    }
  const ratios: Record<string, number> = {};
  for (const mode of o.modes)
    for (const df of o.dfTargets)
      for (const other of ['squashfuse', 'plain']) {
        const d = agg[`${mode}/${df}`]!;
        const x = agg[`${mode}/${other}`]!;
        ratios[`${mode}/read/${df}÷${other}`] = +(d.readMBps! / x.readMBps!).toFixed(2);
        // find: speed ratio (other's seconds / dfnode's seconds), > 1 means dfnode is faster
        ratios[`${mode}/find/${df}÷${other}`] = +(x.findSeconds! / d.findSeconds!).toFixed(2);
      }
  const pageCache = [...o.drops].map(describeDrop).join('; ') || 'n/a';
  out.write(
    `\n1. cached reads — ${o.files} files ≥ ${(o.minSize / 1048576).toFixed(0)} MiB ` +
      `(${(o.bytes / 1e6).toFixed(1)} MB) read whole with 1 MiB read(2) calls by a child process; ` +
      `find -xdev -printf (lstat of every entry); ${o.runs} runs, medians\n`,
  );
  out.write(`page cache (cold rows): ${pageCache}\n`);
  out.write(
    'warm-backing rows: FUSE remounted (kernel and server caches empty), backing files in page cache\n\n',
  );
  const rows = o.modes.flatMap((mode) =>
    o.targets.map((t) => {
      const a = agg[`${mode}/${t}`]!;
      const isPlain = t === 'plain';
      return [
        `${mode}  ${t}`,
        a.readMBps!.toFixed(1),
        a.readSeconds!.toFixed(2),
        isPlain ? '' : a.serverCpuSeconds!.toFixed(2),
        isPlain ? '' : `${a.serverCpuPct}%`,
        isPlain ? '' : `${a.mainThreadCpuPct}%`,
        a.findSeconds!.toFixed(2),
        String(a.findEntries),
      ];
    }),
  );
  out.write(
    formatTable(
      [
        'mode  target',
        'read MB/s',
        'read s',
        'server cpu s',
        'server cpu',
        'main thread',
        'find s',
        'entries',
      ],
      rows,
    ) + '\n\n',
  );
  out.write(
    `ratios (dfnode ÷ other; > 1: dfnode faster): ${Object.entries(ratios)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}\n`,
  );
  out.write(
    '  dfnode/B = dfnode mount with node.fuseBinding B (fuse-native: libfuse 2 from npm, 128 KiB reads, one ' +
      'JS thread; native: the libfuse3 addon in native/); default config otherwise (reads in JS re-verify cached blocks; the addon serves cached blocks from C without re-hashing)\n' +
      '  server cpu = CPU of the serving process during the read / wall time; main thread = its main (JS) thread\n',
  );
  return { agg, ratios, pageCache };
}
