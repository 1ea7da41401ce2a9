/** The largest range a block server answers by default (bytes): runs are at most fetch.maxRunBytes (4 MiB). */
export const DEFAULT_MAX_RANGE_BYTES = 16 * 1024 * 1024;

const DIGEST = /^\/blobs\/(sha256:[0-9a-f]{64})$/;
const RANGE = /^bytes=(\d{1,16})-(\d{1,16})$/;

/** A block request that parsed: the blob, the range and what the query tells about the blob. */
export interface BlockRequest {
  ok: true;
  digest: string;
  offset: number;
  length: number;
  /** The range came in a Range header (answer 206 with Content-Range). */
  header: boolean;
  repo?: string;
  size?: number;
  defer: boolean;
  /** The node can fetch a planned run from the registry itself (`origin=1`): a seed may hand it back. */
  origin: boolean;
  /** A planned background-fill run (`fill=1`): subject to the server's upload slots. */
  fill: boolean;
}

/** A request refused before anything is looked up or allocated: the status and the text to answer. */
export interface RefusedRequest {
  ok: false;
  status: number;
  message: string;
}

/**
 * Parses a peer's block request (`GET /blobs/<digest>?offset=&length=`, or a `Range: bytes=a-b` header)
 * without throwing on any input: 405 for another method, 404 for another path or a URL that does not
 * parse, 400 for a missing or malformed range, 413 for a range longer than `maxLength`.
 */
export function parseBlockRequest(
  method: string | undefined,
  rawUrl: string | undefined,
  rangeHeader: string | undefined,
  maxLength = DEFAULT_MAX_RANGE_BYTES,
): BlockRequest | RefusedRequest {
  if (method !== 'GET' && method !== 'HEAD') return refuse(405, 'only GET and HEAD are served');
  let url: URL;
  try {
    // a path like "//x" parses as a protocol-relative URL with host "x", and "//" does not parse at all
    url = new URL(`http://peer${rawUrl?.startsWith('/') ? rawUrl : '/'}`);
  } catch {
    return refuse(404, 'not found');
  }
  const m = DIGEST.exec(url.pathname);
  if (!m) return refuse(404, 'not found');
  const q = url.searchParams;
  let offset: number;
  let length: number;
  let header = false;
  if (q.has('offset') || q.has('length')) {
    offset = integer(q.get('offset'));
    length = integer(q.get('length'));
  } else {
    const r = RANGE.exec(typeof rangeHeader === 'string' ? rangeHeader : '');
    if (!r) return refuse(400, 'offset and length (or a Range header bytes=a-b) required');
    offset = Number(r[1]);
    length = Number(r[2]) - offset + 1;
    header = true;
  }
  if (!(offset >= 0) || !(length > 0) || !Number.isSafeInteger(offset + length))
    return refuse(400, 'offset and length must be integers, offset >= 0 and length > 0');
  if (length > maxLength)
    return refuse(413, `a range of ${length} bytes is over this host's limit of ${maxLength}; ask for less`);
  const size = q.has('size') ? integer(q.get('size')) : undefined;
  return {
    ok: true,
    digest: m[1]!,
    offset,
    length,
    header,
    repo: q.get('repo') ?? undefined,
    size: size !== undefined && size >= 0 ? size : undefined,
    defer: q.get('defer') === '1',
    origin: q.get('origin') === '1',
    fill: q.get('fill') === '1',
  };
}

function refuse(status: number, message: string): RefusedRequest {
  return { ok: false, status, message };
}

/** A decimal integer of at most 16 digits, else NaN. */
function integer(s: string | null): number {
  return s !== null && /^\d{1,16}$/.test(s) ? Number(s) : NaN;
}
