/** `items` (in unit order) split into groups of adjacent units. */
export function adjacentGroups<T>(items: readonly T[], unit: (x: T) => number): T[][] {
  const out: T[][] = [];
  for (let a = 0; a < items.length;) {
    let b = a;
    while (b + 1 < items.length && unit(items[b + 1]!) === unit(items[b]!) + 1) b++;
    out.push(items.slice(a, b + 1));
    a = b + 1;
  }
  return out;
}
