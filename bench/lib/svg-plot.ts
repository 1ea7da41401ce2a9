/** A small line plot as an SVG document (benchmarks write their results as plots without dependencies). */
export interface PlotSeries {
  name: string;
  points: [number, number][];
}

export interface PlotOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: PlotSeries[];
  logX?: boolean;
  width?: number;
  height?: number;
}

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e'];
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

/** Ticks at 1, 2, 5 × 10^k covering [lo, hi]. */
function niceTicks(lo: number, hi: number, log: boolean): number[] {
  const out: number[] = [];
  if (log) {
    for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++)
      for (const m of [1, 2, 5]) {
        const v = m * 10 ** e;
        if (v >= lo * 0.999 && v <= hi * 1.001) out.push(v);
      }
    return out;
  }
  const span = hi - lo || 1;
  const step0 = 10 ** Math.floor(Math.log10(span / 5));
  const step = [1, 2, 5, 10].map((m) => m * step0).find((s) => span / s <= 8)!;
  for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Number(v.toPrecision(6)));
  return out;
}

export function svgLinePlot(o: PlotOptions): string {
  const W = o.width ?? 720;
  const H = o.height ?? 420;
  const m = { l: 70, r: 150, t: 40, b: 55 };
  const pts = o.series.flatMap((s) => s.points);
  const xs = pts.map((p) => p[0]);
  const ys = pts.map((p) => p[1]);
  const xlo = Math.min(...xs);
  const xhi = Math.max(...xs);
  const ylo = 0;
  const yhi = Math.max(...ys) * 1.1 || 1;
  const fx = (x: number) => {
    const t = o.logX
      ? (Math.log10(x) - Math.log10(xlo)) / (Math.log10(xhi) - Math.log10(xlo) || 1)
      : (x - xlo) / (xhi - xlo || 1);
    return m.l + t * (W - m.l - m.r);
  };
  const fy = (y: number) => H - m.b - ((y - ylo) / (yhi - ylo)) * (H - m.t - m.b);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${W / 2}" y="22" text-anchor="middle" font-size="14">${esc(o.title)}</text>`,
    `<line x1="${m.l}" y1="${H - m.b}" x2="${W - m.r}" y2="${H - m.b}" stroke="black"/>`,
    `<line x1="${m.l}" y1="${m.t}" x2="${m.l}" y2="${H - m.b}" stroke="black"/>`,
  ];
  for (const x of niceTicks(xlo, xhi, o.logX ?? false))
    parts.push(
      `<line x1="${fx(x)}" y1="${H - m.b}" x2="${fx(x)}" y2="${H - m.b + 5}" stroke="black"/>`,
      `<text x="${fx(x)}" y="${H - m.b + 18}" text-anchor="middle">${x}</text>`,
    );
  for (const y of niceTicks(ylo, yhi, false))
    parts.push(
      `<line x1="${m.l - 5}" y1="${fy(y)}" x2="${W - m.r}" y2="${fy(y)}" stroke="#ddd"/>`,
      `<text x="${m.l - 8}" y="${fy(y) + 4}" text-anchor="end">${y}</text>`,
    );
  parts.push(
    `<text x="${(m.l + W - m.r) / 2}" y="${H - 12}" text-anchor="middle">${esc(o.xLabel)}</text>`,
    `<text transform="translate(18 ${(m.t + H - m.b) / 2}) rotate(-90)" text-anchor="middle">${esc(o.yLabel)}</text>`,
  );
  o.series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length]!;
    const d = s.points
      .map((p, k) => `${k ? 'L' : 'M'}${fx(p[0]).toFixed(1)},${fy(p[1]).toFixed(1)}`)
      .join(' ');
    parts.push(`<path d="${d}" fill="none" stroke="${c}" stroke-width="2"/>`);
    for (const p of s.points)
      parts.push(`<circle cx="${fx(p[0]).toFixed(1)}" cy="${fy(p[1]).toFixed(1)}" r="3" fill="${c}"/>`);
    const ly = m.t + 10 + i * 20;
    parts.push(
      `<line x1="${W - m.r + 15}" y1="${ly}" x2="${W - m.r + 35}" y2="${ly}" stroke="${c}" stroke-width="2"/>`,
      `<text x="${W - m.r + 40}" y="${ly + 4}">${esc(s.name)}</text>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}
