/** How a backoff delay is spread: all of it random, half of it random, or none. */
export type Jitter = 'full' | 'equal' | 'none';

/**
 * The delay before retry number `attempt` (0 = the first retry): min(maxMs, baseMs · 2^attempt), spread by
 * `jitter` (default 'full': uniform in [0, cap); 'equal': uniform in [cap/2, cap]; 'none': cap). The one
 * exponential backoff of the code base: registry retries, block fetch retries, fill passes, isolation.
 */
export function backoff(
  attempt: number,
  baseMs: number,
  maxMs: number,
  jitter: Jitter = 'full',
  random: () => number = Math.random,
): number {
  // 2^30 is far past any cap: keep the product finite
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(0, attempt), 30));
  if (jitter === 'none') return cap;
  if (jitter === 'equal') return Math.round(cap / 2 + (random() * cap) / 2);
  return random() * cap;
}
