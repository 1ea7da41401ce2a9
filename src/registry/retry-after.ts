/**
 * A registry's `Retry-After` (RFC 9110 §10.2.3: delay-seconds or an HTTP-date) as milliseconds from `now`, or
 * undefined when absent or unreadable. Registries send it with 429 (rate limits) and 503.
 */
export function parseRetryAfter(value: string | string[] | undefined, now = Date.now()): number | undefined {
  const v = (Array.isArray(value) ? value[0] : value)?.trim();
  if (!v) return undefined;
  if (/^\d{1,10}$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isFinite(at) && /[a-z]/i.test(v) ? Math.max(0, at - now) : undefined;
}

/** Retry-After the client waits for before trying again; a longer one fails the request at once, saying so. */
export const MAX_RETRY_AFTER_MS = 60_000;

/** "retry after 30 s" / "retry after 2 min" for messages. */
export function retryAfterText(ms: number): string {
  const s = Math.ceil(ms / 1000);
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : `${Math.round(s / 3600)} h`;
}
