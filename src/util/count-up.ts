/**
 * Adds one to `key`'s count in `counts` and returns the new count. The table holds at most `cap` keys: a
 * full one forgets the key counted least recently, never the whole table, so keys made up to flood it
 * push out only the oldest counts, one per key counted.
 */
export function countUp(counts: Map<string, number>, key: string, cap: number): number {
  const n = (counts.get(key) ?? 0) + 1;
  counts.delete(key);
  if (counts.size >= cap) {
    const oldest = counts.keys().next();
    if (!oldest.done) counts.delete(oldest.value);
  }
  counts.set(key, n);
  return n;
}
