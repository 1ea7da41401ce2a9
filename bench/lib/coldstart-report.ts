// bench/coldstart's samples and images, and its report: a table of medians per variant, its legend and one
// JSON line (bench/README.md).
import type { Variant, Workload } from './coldstart-variants.js';
import { formatTable, median } from './measure.js';

export interface Sample {
  /** Wall seconds from the pull's start to the workload's exit. */
  seconds: number;
  /** Bytes the registry side sent over the veth in that time (IP + TCP headers included). */
  bytes: number;
  pullSeconds: number;
  runSeconds: number;
  /** Not timed: containerd and dfnode run start-up before the sample. */
  setupSeconds: number;
  /** dfnode run's metrics right after the workload (dfnode variants): see DfnodeRun.metrics. */
  metrics?: Record<string, number>;
  /** dfnode pull: seconds after its spawn at which each progress line appeared. */
  pullLines?: Array<[number, string]>;
}

/** One image of the benchmark, pushed and converted. */
export interface Image {
  fixture: string;
  workload: Workload;
  source: string;
  ref: string;
  /** Converted with a recorded prefetch list, or why not. */
  optimized: { ref: string } | { skipped: string };
  layers: number;
  gzipBytes: number;
  dfbBytes: number;
}

/** Medians per variant: a table, its legend and one JSON line. */
export function report(
  img: Image,
  variants: Variant[],
  samples: Record<string, Sample[]>,
  skipped: (v: Variant) => string | undefined,
  ctx: {
    runs: number;
    mbit: number;
    shaping: string;
    pageCache: string;
    cliStartSeconds: number;
    env: Record<string, unknown>;
  },
): void {
  const out = process.stdout;
  const results: Record<string, Record<string, unknown>> = {};
  for (const v of variants) {
    const ss = samples[v.key];
    if (!ss?.length) {
      results[v.key] = { name: v.name, skipped: skipped(v) ?? 'no samples' };
      continue;
    }
    const m = (f: (s: Sample) => number) => median(ss.map(f));
    results[v.key] = {
      name: v.name,
      seconds: +m((s) => s.seconds).toFixed(2),
      pullSeconds: +m((s) => s.pullSeconds).toFixed(2),
      runSeconds: +m((s) => s.runSeconds).toFixed(2),
      bytes: Math.round(m((s) => s.bytes)),
      fill: v.fill,
      all: ss.map((s) => +s.seconds.toFixed(2)),
      allPull: ss.map((s) => +s.pullSeconds.toFixed(2)),
      allBytes: ss.map((s) => s.bytes),
      ...(ss[0]!.metrics
        ? {
            readBlockedSeconds: +m((s) => s.metrics?.dfnode_read_blocked_seconds_total ?? NaN).toFixed(2),
            rangeRequests: m((s) => s.metrics?.dfnode_fetch_requests_total ?? NaN),
          }
        : {}),
      ...(ss[0]!.pullLines ? { pullTimeline: ss[0]!.pullLines } : {}),
    };
  }
  const base = results.overlayfs?.seconds as number | undefined;
  for (const r of Object.values(results))
    if (typeof r.seconds === 'number') {
      if (base) r.ofOverlayfs = +((r.seconds as number) / base).toFixed(3);
      r.bytesOfImage = +((r.bytes as number) / img.gzipBytes).toFixed(3);
      r.bytesOfDfb = +((r.bytes as number) / img.dfbBytes).toFixed(3);
    }
  out.write(
    `\n${img.fixture}: ${img.layers} layers, ${(img.gzipBytes / 1e6).toFixed(1)} MB gzip (the image size below), ` +
      `${(img.dfbBytes / 1e6).toFixed(1)} MB DFB; workload: ctr run --rm ${img.workload.cmd.join(' ')}\n` +
      `link ${ctx.mbit} Mbit/s each way (tc htb, no added latency); ${ctx.runs} runs, medians; page cache: ` +
      `${ctx.pageCache}; \`node dfnode.js --version\` (bundle) takes ${ctx.cliStartSeconds.toFixed(2)} s here\n\n`,
  );
  out.write(
    formatTable(
      [
        'variant',
        'pull s',
        'run s',
        'total s',
        '× overlayfs',
        'MB from registry',
        'of gzip image',
        'runs (s)',
      ],
      variants.map((v) => {
        const r = results[v.key]!;
        if (typeof r.seconds !== 'number') return [v.name, String(r.skipped), '', '', '', '', '', ''];
        return [
          v.name,
          (r.pullSeconds as number).toFixed(2),
          (r.runSeconds as number).toFixed(2),
          r.seconds.toFixed(2),
          r.ofOverlayfs !== undefined ? `${(r.ofOverlayfs as number).toFixed(2)}×` : '',
          ((r.bytes as number) / 1e6).toFixed(1),
          `${(100 * (r.bytesOfImage as number)).toFixed(1)} %`,
          (r.all as number[]).map((x) => x.toFixed(2)).join(' '),
        ];
      }),
    ) + '\n\n',
  );
  out.write(
    '  total = pull + first run: from the start of the pull to the exit of `ctr run` (background fill may still run)\n' +
      '  pull s: dfnode rows = `dfnode pull` alone (spawn to exit; CRI: the PullImage call); overlayfs = `ctr images pull`\n' +
      '  × overlayfs = total ÷ overlayfs total; MB from registry = bytes the registry namespace sent over the veth ' +
      `(IP+TCP included) by the end of the first run; of gzip image = ÷ ${(img.gzipBytes / 1e6).toFixed(1)} MB\n`,
  );
  out.write(
    '\n' +
      JSON.stringify({
        bench: 'coldstart',
        fixture: img.fixture,
        layers: img.layers,
        gzipBytes: img.gzipBytes,
        dfbBytes: img.dfbBytes,
        mbit: ctx.mbit,
        runs: ctx.runs,
        shaping: ctx.shaping,
        workload: img.workload.cmd.join(' '),
        pageCache: ctx.pageCache,
        cliStartSeconds: ctx.cliStartSeconds,
        results,
        env: ctx.env,
      }) +
      '\n',
  );
}
