// Summarise V8 .cpuprofile files (node --cpu-prof): self time per function,
// over every thread's profile in a directory.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { formatTable } from './measure.js';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface FunctionCost {
  name: string;
  where: string;
  selfMs: number;
}

export interface ProfileSummary {
  file: string;
  /** Wall time covered by the profile. */
  durationMs: number;
  /** Sampled time not spent idle (`(idle)`, `(program)` excluded). */
  busyMs: number;
  top: FunctionCost[];
}

function shortUrl(url: string): string {
  const i = url.indexOf('/dist/');
  if (i >= 0) return url.slice(i + 1);
  const n = url.indexOf('/node_modules/');
  if (n >= 0) return url.slice(n + 1);
  return url.replace(/^file:\/\//, '') || '(native)';
}

function summarise(file: string, p: CpuProfile, topN: number): ProfileSummary {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, FunctionCost>();
  let busy = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const node = byId.get(p.samples[i]!);
    const dt = (p.timeDeltas[i + 1] ?? 0) / 1000;
    if (!node) continue;
    const { functionName, url, lineNumber } = node.callFrame;
    const name = functionName || '(anonymous)';
    if (name !== '(idle)' && name !== '(program)') busy += dt;
    const key = `${name}\0${url}\0${lineNumber}`;
    const e = self.get(key) ?? { name, where: url ? `${shortUrl(url)}:${lineNumber + 1}` : '', selfMs: 0 };
    e.selfMs += dt;
    self.set(key, e);
  }
  const top = [...self.values()].sort((a, b) => b.selfMs - a.selfMs).slice(0, topN);
  return { file, durationMs: (p.endTime - p.startTime) / 1000, busyMs: busy, top };
}

/** One summary per .cpuprofile in `dir` (main thread and each worker). */
export async function summariseDir(dir: string, topN = 14): Promise<ProfileSummary[]> {
  const out: ProfileSummary[] = [];
  for (const f of (await readdir(dir)).filter((n) => n.endsWith('.cpuprofile')).sort()) {
    const p = JSON.parse(await readFile(join(dir, f), 'utf8')) as CpuProfile;
    out.push(summarise(f, p, topN));
  }
  return out;
}

/** Per thread: wall/busy time and the top self-time functions (idle excluded), as text. */
export function formatProfiles(summaries: ProfileSummary[], rowsPerThread = 10): string {
  let text = '';
  for (const p of summaries) {
    const idle = p.durationMs - p.busyMs;
    text += `\n  ${p.file}: ${p.durationMs.toFixed(0)} ms wall, ${p.busyMs.toFixed(0)} ms busy, `;
    text += `${idle.toFixed(0)} ms idle or (program)\n`;
    const rows = p.top
      .filter((f) => f.name !== '(idle)' && f.name !== '(program)')
      .slice(0, rowsPerThread)
      .map((f) => [f.name, f.selfMs.toFixed(0), ((100 * f.selfMs) / p.durationMs).toFixed(1), f.where]);
    const table = formatTable(['function', 'self ms', '% wall', 'where'], rows);
    text += table
      .split('\n')
      .map((l) => `    ${l}`)
      .join('\n');
    text += '\n';
  }
  return text;
}
