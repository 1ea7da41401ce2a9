import { DfError } from '../errors.js';

/**
 * One line of a prefetch list: a file by its absolute path in the container's root filesystem and, when
 * only parts of it were read, those byte ranges `[offset, length]` in first-access order (absent: the whole
 * file).
 */
export interface PrefetchEntry {
  path: string;
  ranges?: Array<[number, number]>;
}

/**
 * Parses a prefetch list (JSON Lines, one entry per line in first-access order). Empty lines and lines
 * starting with `#` are ignored; a line that does not start with `{` is a path (the whole file). An invalid
 * line is an error naming its line number.
 */
export function parsePrefetchList(text: string): PrefetchEntry[] {
  const out: PrefetchEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '' || line.startsWith('#')) continue;
    const bad = (why: string) => DfError.invalidArgument(`prefetch list line ${i + 1}: ${why}`);
    if (!line.startsWith('{')) {
      if (!line.startsWith('/')) throw bad(`path ${JSON.stringify(line)} is not absolute`);
      out.push({ path: line });
      continue;
    }
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (err) {
      throw bad(`not JSON (${(err as Error).message})`);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad('not an object');
    const { path, ranges } = v as { path?: unknown; ranges?: unknown };
    if (typeof path !== 'string' || !path.startsWith('/')) throw bad('"path" must be an absolute path');
    if (ranges === undefined) {
      out.push({ path });
      continue;
    }
    if (!Array.isArray(ranges)) throw bad('"ranges" must be an array of [offset, length]');
    const rs: Array<[number, number]> = [];
    for (const r of ranges as unknown[]) {
      if (
        !Array.isArray(r) ||
        r.length !== 2 ||
        !Number.isSafeInteger(r[0]) ||
        !Number.isSafeInteger(r[1]) ||
        (r[0] as number) < 0 ||
        (r[1] as number) <= 0
      )
        throw bad('each range must be [offset, length] with offset ≥ 0 and length > 0');
      rs.push([r[0] as number, r[1] as number]);
    }
    out.push({ path, ranges: rs });
  }
  return out;
}

/** The text of a prefetch list (one JSON object per line, newline-terminated). */
export function formatPrefetchList(entries: readonly PrefetchEntry[]): string {
  let s = '';
  for (const e of entries)
    s += JSON.stringify(e.ranges ? { path: e.path, ranges: e.ranges } : { path: e.path }) + '\n';
  return s;
}
