import { DfError } from '../errors.js';

/** The most image references one preheat request may name. */
export const MAX_PREHEAT_REFS = 64;
/** The largest preheat request body (bytes): larger is refused (413) before it is parsed. */
export const MAX_PREHEAT_BODY_BYTES = 256 * 1024;

/** What a seed did with a preheat request's images. */
export interface PreheatAnswer {
  /** References (normalised) being preheated, including those already in progress. */
  accepted: string[];
  refused: { image: string; reason: string }[];
}

const invalid = (msg: string) => DfError.invalidArgument(`preheat request: ${msg}`);
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v.length <= 512 ? v : undefined);

/**
 * The image references a seed's `POST /preheat` names, from any of these JSON bodies:
 * - `{"image": "REF"}` or `{"images": ["REF", ...]}` (dfnode's own);
 * - a registry notification envelope (distribution's `{"events": [...]}`): push events of manifests, as
 *   `request.host/target.repository` with `target.tag`, else `target.digest` (blob pushes are skipped);
 * - a Harbor webhook (`{"event_data": {"resources": [{"resource_url": "HOST/REPO:TAG"}]}}`).
 * Duplicates are dropped; more than MAX_PREHEAT_REFS, or a body naming none, is INVALID_ARGUMENT. The
 * references are not parsed here: the seed checks each one (syntax, allowed registry).
 */
export function preheatRefs(body: unknown): string[] {
  if (!isObject(body)) throw invalid('the body must be a JSON object');
  const refs: string[] = [];
  const add = (r: string | undefined) => {
    if (r === undefined || refs.includes(r)) return;
    if (refs.length >= MAX_PREHEAT_REFS) throw invalid(`more than ${MAX_PREHEAT_REFS} images`);
    refs.push(r);
  };
  if ('image' in body) {
    const r = str(body.image);
    if (!r) throw invalid('"image" must be an image reference');
    add(r);
  }
  if ('images' in body) {
    if (!Array.isArray(body.images)) throw invalid('"images" must be a list of image references');
    if (body.images.length > MAX_PREHEAT_REFS) throw invalid(`more than ${MAX_PREHEAT_REFS} images`);
    for (const i of body.images as unknown[]) {
      const r = str(i);
      if (!r) throw invalid('"images" must be a list of image references');
      add(r);
    }
  }
  if ('events' in body) {
    if (!Array.isArray(body.events)) throw invalid('"events" must be a list');
    for (const e of (body.events as unknown[]).slice(0, 1024)) add(notificationRef(e));
  }
  const data = body.event_data;
  if (isObject(data) && Array.isArray(data.resources))
    for (const r of (data.resources as unknown[]).slice(0, 1024))
      add(isObject(r) ? str(r.resource_url) : undefined);
  if (!refs.length)
    throw invalid('it names no image (expected "image", "images", registry "events" or Harbor "event_data")');
  return refs;
}

/** The manifest a registry notification event names, or undefined (not a manifest push, or malformed). */
function notificationRef(e: unknown): string | undefined {
  if (!isObject(e) || e.action !== 'push' || !isObject(e.target) || !isObject(e.request)) return undefined;
  const t = e.target;
  const mediaType = str(t.mediaType) ?? '';
  if (!/manifest|index/.test(mediaType)) return undefined;
  const host = str(e.request.host);
  const repo = str(t.repository);
  if (!host || !repo) return undefined;
  const tag = str(t.tag);
  const digest = str(t.digest);
  if (tag) return `${host}/${repo}:${tag}`;
  return digest ? `${host}/${repo}@${digest}` : undefined;
}
