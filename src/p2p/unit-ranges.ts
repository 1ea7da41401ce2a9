/**
 * The units a seed is sending other nodes, told with a deferral (409): `x-dfnode-away: 3-9,14,20-23`. The
 * node's next plan then avoids them all instead of asking for them one run (and one round trip) at a time.
 * A hint from a cluster member: bounded and checked; a value that is not of this form is ignored.
 */
export const AWAY_HEADER = 'x-dfnode-away';

/** Longest header value sent or read (characters); a longer list is cut (it is a hint). */
const MAX_CHARS = 2048;
/** Most units a value may name (a lying seed cannot make a node build a large set). */
const MAX_UNITS = 1 << 16;
/** Unit numbers as in tracker messages (2^22 units at most; tracker-limits.ts). */
const MAX_UNIT = (1 << 22) - 1;

/** `units` (any order, duplicates allowed) as ranges, cut to MAX_CHARS. */
export function encodeUnitRanges(units: readonly number[]): string {
  const sorted = [...units].sort((a, b) => a - b);
  let out = '';
  for (let i = 0; i < sorted.length;) {
    const first = sorted[i]!;
    let last = first;
    while (i < sorted.length && sorted[i]! <= last + 1) last = Math.max(last, sorted[i++]!);
    const part = first === last ? `${first}` : `${first}-${last}`;
    if (out.length + part.length + 1 > MAX_CHARS) break;
    out += out ? `,${part}` : part;
  }
  return out;
}

/** The units a header value names, or none when it is absent, too long or not of the form above. */
export function parseUnitRanges(value: unknown): number[] {
  if (typeof value !== 'string' || !value || value.length > MAX_CHARS) return [];
  if (!/^\d{1,7}(-\d{1,7})?(,\d{1,7}(-\d{1,7})?)*$/.test(value)) return [];
  const units: number[] = [];
  for (const part of value.split(',')) {
    const [a, b = a] = part.split('-').map(Number) as [number, number?];
    if (b < a || b > MAX_UNIT || units.length + (b - a + 1) > MAX_UNITS) return [];
    for (let u = a; u <= b; u++) units.push(u);
  }
  return units;
}
