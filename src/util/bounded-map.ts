/**
 * Sets `key` to `value` as the newest entry of `map` (a Map keeps insertion order) and drops the oldest
 * entries beyond `max`: a map bounded by entries, the least recently set going first.
 */
export function setNewest<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key);
  map.set(key, value);
  for (const k of map.keys()) {
    if (map.size <= max) break;
    map.delete(k);
  }
}
