import { DfError } from '../errors.js';
import { isHeaderName, isHeaderValue } from '../util/header-grammar.js';

// The origin headers (`dfnode get --header`, credentials among them) a node gives the file's seed with a
// piece table request, so that the seed fetches an origin that needs them (src/mirror/seed-files.ts).

/** Request header of `GET /files/table`: base64 of the JSON list of [name, value] pairs. */
export const ORIGIN_HEADERS_HEADER = 'x-dfnode-origin-headers';
/** Pairs, and encoded bytes, at most. */
const MAX_PAIRS = 64;
const MAX_ENCODED = 16 * 1024;
/** Longest header name taken. */
const MAX_NAME = 256;
/** Headers a node may not set for the origin: the request's own framing and routing. */
const REFUSED = new Set([
  'host',
  'content-length',
  'transfer-encoding',
  'connection',
  'range',
  'upgrade',
  'te',
]);

/** The header value for `headers` (undefined when there are none). */
export function encodeOriginHeaders(headers: Readonly<Record<string, string>>): string | undefined {
  const pairs = Object.entries(headers);
  return pairs.length ? Buffer.from(JSON.stringify(pairs)).toString('base64') : undefined;
}

/**
 * The headers a node sent (`{}` without the header): names lower-cased; INVALID_ARGUMENT for anything but
 * a bounded list of header-safe names and values without line breaks, or a header that frames or routes
 * the request (Host, Range, ...).
 */
export function decodeOriginHeaders(value: string | string[] | undefined): Record<string, string> {
  if (value === undefined) return {};
  const bad = (why: string) => DfError.invalidArgument(`${ORIGIN_HEADERS_HEADER}: ${why}`);
  if (typeof value !== 'string' || value.length > MAX_ENCODED)
    throw bad(`one value of at most ${MAX_ENCODED} bytes`);
  let pairs: unknown;
  try {
    pairs = JSON.parse(Buffer.from(value, 'base64').toString('utf8'));
  } catch {
    throw bad('not base64 of JSON');
  }
  if (!Array.isArray(pairs) || pairs.length > MAX_PAIRS) throw bad(`a list of at most ${MAX_PAIRS} pairs`);
  const out: Record<string, string> = {};
  for (const p of pairs) {
    if (!Array.isArray(p) || p.length !== 2 || typeof p[0] !== 'string' || typeof p[1] !== 'string')
      throw bad('pairs of [name, value] strings');
    const [name, v] = p as [string, string];
    if (name.length > MAX_NAME || !isHeaderName(name))
      throw bad(`header name ${JSON.stringify(name.slice(0, 40))}`);
    if (!isHeaderValue(v)) throw bad(`a line break in ${name}`);
    const lower = name.toLowerCase();
    if (REFUSED.has(lower)) throw bad(`${lower} is not a header for the origin`);
    out[lower] = v;
  }
  return out;
}
