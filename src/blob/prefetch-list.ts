import { readFile, stat } from 'node:fs/promises';
import { DfError } from '../errors.js';

/**
 * The prefetch list: which files (and which byte ranges of them) a container read first, in first-access
 * order. Written by dfnode's read recorder (`dfnode run --record-reads`), read by `dfconvert --prefetch-list`.
 *
 * JSON Lines, UTF-8, one object per line:
 *   {"path":"/usr/lib/x86_64-linux-gnu/libc.so.6","ranges":[[0,131072],[1835008,65536]]}
 * `path` is absolute in the container's root filesystem; `ranges` (optional) are `[offset, length]` pairs of
 * the file's content in first-access order; absent means the whole file. Empty lines and lines starting with
 * `#` are ignored; a line that does not start with `{` is a path (whole file). Other keys are ignored.
 */
export interface PrefetchEntry {
  /** Normalised absolute path: '/a/b', no '.', '..' or empty components. */
  path: string;
  /** `[offset, length]` pairs in first-access order; absent = the whole file. */
  ranges?: ReadonlyArray<readonly [number, number]>;
}

/** Bounds: a list is read whole into memory, so it is capped. */
export const PREFETCH_LIST_LIMITS = {
  /** Bytes of list text. */
  maxBytes: 64 * 1024 * 1024,
  /** Lines (including blank and comment lines). */
  maxLines: 1_000_000,
  /** Ranges over all entries. */
  maxRanges: 1_000_000,
  /** Bytes of one path. */
  maxPathBytes: 16 * 1024,
} as const;

const bad = (line: number, msg: string) => DfError.invalidArgument(`prefetch list line ${line}: ${msg}`);

/**
 * Normalises an absolute container path: collapses '//' and '.', resolves '..' (never above '/').
 * Throws on a relative path, NUL, or a path naming the root itself.
 */
export function normalizePrefetchPath(raw: string, line = 0): string {
  if (!raw.startsWith('/')) throw bad(line, `path ${JSON.stringify(raw)} is not absolute`);
  if (raw.includes('\0')) throw bad(line, 'path contains NUL');
  if (Buffer.byteLength(raw) > PREFETCH_LIST_LIMITS.maxPathBytes)
    throw bad(line, `path longer than ${PREFETCH_LIST_LIMITS.maxPathBytes} bytes`);
  const out: string[] = [];
  for (const c of raw.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') out.pop();
    else out.push(c);
  }
  if (!out.length) throw bad(line, `path ${JSON.stringify(raw)} names the root directory, not a file`);
  return '/' + out.join('/');
}

function parseRanges(v: unknown, line: number, budget: { left: number }): Array<[number, number]> {
  if (!Array.isArray(v)) throw bad(line, '"ranges" is not an array');
  const out: Array<[number, number]> = [];
  for (const r of v) {
    if (!Array.isArray(r) || r.length !== 2) throw bad(line, 'a range is not an [offset, length] pair');
    const [o, l] = r as unknown[];
    if (!Number.isSafeInteger(o) || !Number.isSafeInteger(l) || (o as number) < 0 || (l as number) < 0)
      throw bad(line, `range ${JSON.stringify(r)}: offset and length must be non-negative integers`);
    if ((o as number) + (l as number) > Number.MAX_SAFE_INTEGER) throw bad(line, 'range too large');
    if (--budget.left < 0) throw bad(line, `more than ${PREFETCH_LIST_LIMITS.maxRanges} ranges in the list`);
    out.push([o as number, l as number]);
  }
  return out;
}

/** Parses a prefetch list; throws INVALID_ARGUMENT naming the line of the first error. */
export function parsePrefetchList(text: string): PrefetchEntry[] {
  if (text.length > PREFETCH_LIST_LIMITS.maxBytes)
    throw DfError.invalidArgument(`prefetch list larger than ${PREFETCH_LIST_LIMITS.maxBytes} bytes`);
  const lines = text.split('\n');
  if (lines.length > PREFETCH_LIST_LIMITS.maxLines)
    throw DfError.invalidArgument(`prefetch list has more than ${PREFETCH_LIST_LIMITS.maxLines} lines`);
  const out: PrefetchEntry[] = [];
  const budget = { left: PREFETCH_LIST_LIMITS.maxRanges };
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const line = lines[i]!.replace(/\r$/, '');
    const t = line.trim();
    if (t === '' || t.startsWith('#')) continue;
    if (!t.startsWith('{')) {
      out.push({ path: normalizePrefetchPath(t, n) });
      continue;
    }
    let obj: unknown;
    try {
      obj = JSON.parse(t);
    } catch (err) {
      throw bad(n, `not valid JSON (${(err as Error).message})`);
    }
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) throw bad(n, 'not a JSON object');
    const o = obj as Record<string, unknown>;
    if (typeof o.path !== 'string') throw bad(n, '"path" is missing or not a string');
    const entry: PrefetchEntry = { path: normalizePrefetchPath(o.path, n) };
    if (o.ranges !== undefined) entry.ranges = parseRanges(o.ranges, n, budget);
    out.push(entry);
  }
  return out;
}

/** Formats entries as a prefetch list (one JSON object per line); parsePrefetchList(format(e)) gives e back. */
export function formatPrefetchList(entries: readonly PrefetchEntry[]): string {
  let s = '';
  const budget = { left: PREFETCH_LIST_LIMITS.maxRanges };
  entries.forEach((e, i) => {
    const path = normalizePrefetchPath(e.path, i + 1);
    const ranges = e.ranges === undefined ? undefined : parseRanges(e.ranges, i + 1, budget);
    s += JSON.stringify(ranges === undefined ? { path } : { path, ranges }) + '\n';
  });
  return s;
}

/**
 * Reads and parses a prefetch list file (refused before reading when it is not a regular file or is larger
 * than the cap). What `dfconvert --prefetch-list` and `dfconvert --optimize` call before Converter({ prefetch }).
 */
export async function readPrefetchListFile(file: string): Promise<PrefetchEntry[]> {
  const st = await stat(file).catch((err: unknown) => {
    throw DfError.invalidArgument(`prefetch list ${file}: ${(err as Error).message}`);
  });
  if (!st.isFile() || st.size > PREFETCH_LIST_LIMITS.maxBytes)
    throw DfError.invalidArgument(
      `prefetch list ${file}: not a regular file of at most ${PREFETCH_LIST_LIMITS.maxBytes} bytes`,
    );
  try {
    return parsePrefetchList(await readFile(file, 'utf8'));
  } catch (err) {
    throw DfError.from(err, `prefetch list ${file}`);
  }
}
