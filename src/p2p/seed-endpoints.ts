import type { IncomingMessage, ServerResponse } from 'node:http';
import { DfError } from '../errors.js';
import type { Logger } from '../log.js';
import { isBusy } from '../fetch/types.js';
import { MANIFEST_PATH_PREFIX, type SeedManifests } from './manifest-request.js';
import { decodeOriginHeaders, ORIGIN_HEADERS_HEADER } from './origin-headers.js';
import { MAX_PREHEAT_BODY_BYTES, preheatRefs, type PreheatAnswer } from './preheat-request.js';

// The seed's endpoints on the block server's port besides blocks and the tracker, after the cluster token
// (block-server.ts): preheat requests, raw files' piece tables, manifests for the nodes' mirrors.

/** Answers a request with a status and a text message (block-server.ts). */
export type Fail = (status: number, msg: string) => void;

/** Ends the request's work when its response closes: the client went away, or the answer is out. */
export function abortOnClose(res: ServerResponse, ac: AbortController): void {
  res.on('close', () => ac.abort(res.writableFinished ? ANSWERED : DfError.aborted('client went away')));
}

/** The reason of a request whose answer went out whole: one object, not an error with a stack per request. */
const ANSWERED = DfError.aborted('answered');

/**
 * `POST /preheat` with a JSON body naming images (preheatRefs): 202 and what was accepted and refused,
 * 403 when every image was refused, 400 for a body that names none, 413 beyond MAX_PREHEAT_BODY_BYTES.
 */
export async function handlePreheat(
  req: IncomingMessage,
  res: ServerResponse,
  fail: Fail,
  preheat: (images: string[]) => PreheatAnswer,
  log: Logger,
): Promise<void> {
  if (req.method !== 'POST') {
    res.setHeader('allow', 'POST');
    return fail(405, 'POST a JSON body naming the images to preheat');
  }
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_PREHEAT_BODY_BYTES)
    return fail(413, `a preheat request is at most ${MAX_PREHEAT_BODY_BYTES} bytes`);
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > MAX_PREHEAT_BODY_BYTES) {
      fail(413, `a preheat request is at most ${MAX_PREHEAT_BODY_BYTES} bytes`);
      req.destroy();
      return;
    }
    chunks.push(c as Buffer);
  }
  let answer: PreheatAnswer;
  try {
    let body: unknown;
    try {
      body = JSON.parse(Buffer.concat(chunks, n).toString('utf8'));
    } catch {
      throw DfError.invalidArgument('preheat request: the body is not JSON');
    }
    answer = preheat(preheatRefs(body));
  } catch (err) {
    const e = DfError.from(err);
    return fail(e.code === 'INVALID_ARGUMENT' ? 400 : 500, e.message);
  }
  log.info({ ...answer }, 'preheat requested');
  res.writeHead(answer.accepted.length ? 202 : 403, { 'content-type': 'application/json' });
  res.end(JSON.stringify(answer) + '\n');
}

/**
 * `GET /files/table?url=&digest=`: the piece table (JSON) of a raw file; the error's status otherwise
 * (403: origin not allowed, 404: the origin has no such file, 409: digest mismatch, 502: the origin
 * failed), with the message as text.
 */
export async function handleFileTable(
  req: IncomingMessage,
  res: ServerResponse,
  fail: Fail,
  fileTable: (query: URLSearchParams, signal: AbortSignal, origin: Record<string, string>) => Promise<Buffer>,
): Promise<void> {
  if (req.method !== 'GET') {
    res.setHeader('allow', 'GET');
    return fail(405, 'GET /files/table?url=...');
  }
  const ac = new AbortController();
  abortOnClose(res, ac);
  let q: URLSearchParams;
  let origin: Record<string, string>;
  try {
    q = new URL(`http://peer${req.url ?? ''}`).searchParams;
    origin = decodeOriginHeaders(req.headers[ORIGIN_HEADERS_HEADER]);
  } catch (err) {
    return fail(400, err instanceof DfError ? err.message : 'malformed query');
  }
  try {
    const table = await fileTable(q, ac.signal, origin);
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': table.length });
    res.end(table);
  } catch (err) {
    if (res.destroyed) return;
    const e = DfError.from(err);
    // at its limit (files fetched at once): alive, the node asks again later
    if (isBusy(e)) {
      res.setHeader('retry-after', '1');
      return fail(429, e.message);
    }
    const status =
      e.code === 'INVALID_ARGUMENT'
        ? 400
        : e.code === 'FORBIDDEN' || e.code === 'UNAUTHORIZED'
          ? 403
          : e.code === 'NOT_FOUND'
            ? 404
            : e.code === 'DIGEST_MISMATCH'
              ? 409
              : 502;
    fail(status, e.message);
  }
}

/** `GET /manifests/v2/...`: the seed's manifest relay's answer as it gives it (status, headers, body). */
export async function handleManifest(
  req: IncomingMessage,
  res: ServerResponse,
  fail: Fail,
  manifests: SeedManifests,
): Promise<void> {
  if (req.method !== 'GET') {
    res.setHeader('allow', 'GET');
    return fail(405, 'GET /manifests/v2/<name>/manifests/<reference>?ns=<registry>');
  }
  const ac = new AbortController();
  abortOnClose(res, ac);
  const auth = req.headers.authorization;
  const accept = req.headers.accept;
  const a = await manifests(
    (req.url ?? '').slice(MANIFEST_PATH_PREFIX.length - '/v2/'.length),
    { ...(auth !== undefined && { authorization: auth }), ...(accept !== undefined && { accept }) },
    ac.signal,
  );
  if (res.destroyed) return;
  res.writeHead(a.status, { ...a.headers, 'content-length': a.body.length });
  res.end(a.body);
}
