import { DfError } from '../errors.js';
import { canonicalRegistry, parseReference, type ImageReference } from '../registry/reference.js';

/** A pull request an engine sends to the mirror, resolved to the upstream registry it is for. */
export type MirrorRoute =
  | { kind: 'base'; registry: string }
  | { kind: 'manifest'; ref: ImageReference; reference: string }
  | { kind: 'blob'; ref: ImageReference; digest: string };

/** Longest request target accepted (the grammar allows 255 characters of name plus a digest). */
export const MAX_TARGET = 2048;

const HOSTLIKE = (s: string) => s.includes('.') || s.includes(':') || s === 'localhost';

/** A registry named by a request or the configuration, refused (INVALID_ARGUMENT) when it is no host. */
function checkedRegistry(registry: string): string {
  if (!registry || /[/@\s]/.test(registry)) throw DfError.invalidArgument(`invalid registry "${registry}"`);
  return registry;
}

/**
 * Parses `/v2/...` as the OCI distribution spec names it, for any upstream: containerd names the registry
 * in `?ns=<host>` (hosts.toml mirrors); podman/CRI-O and others put it first in the path
 * (`/v2/<host>/<repo>/...`, a mirror `location = "127.0.0.1:65001/<host>"`); otherwise `defaultRegistry`
 * (Docker's `registry-mirrors`, which covers Docker Hub only). Throws a DfError with code INVALID_ARGUMENT
 * (answered 400) or NOT_FOUND (404) for anything else.
 */
export function parseMirrorRoute(target: string, defaultRegistry: string): MirrorRoute {
  if (target.length > MAX_TARGET) throw DfError.invalidArgument('request target too long');
  let url: URL;
  try {
    url = new URL(target, 'http://mirror');
  } catch {
    throw DfError.invalidArgument('malformed request target');
  }
  // No dot segments or other forms the URL parser would rewrite: the path is taken as the engine sent it.
  if (url.pathname !== target.split('?')[0])
    throw DfError.invalidArgument('request path is not in normal form');
  const ns = url.searchParams.get('ns') ?? undefined;
  const path = url.pathname;
  if (path === '/v2' || path === '/v2/') {
    // the host the references of this registry resolve to (docker.io: registry-1.docker.io)
    return { kind: 'base', registry: canonicalRegistry(checkedRegistry(ns ?? defaultRegistry)) };
  }
  const m = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/.exec(path);
  if (!m) throw new DfError('NOT_FOUND', `not a pull endpoint: ${path.slice(0, 200)}`);
  let name = m[1]!;
  const what = m[2]!;
  const reference = decodeURIComponent(m[3]!);
  let registry = ns;
  if (!registry) {
    const slash = name.indexOf('/');
    const first = slash > 0 ? name.slice(0, slash) : '';
    if (first && HOSTLIKE(first)) {
      registry = first;
      name = name.slice(slash + 1);
    } else registry = defaultRegistry;
  }
  checkedRegistry(registry);
  const isDigest = /^[a-z0-9]+:/.test(reference);
  if (what === 'blobs' && !isDigest) throw DfError.invalidArgument(`invalid blob digest "${reference}"`);
  // parseReference validates host, repository, tag and digest with the reference grammar.
  const ref = parseReference(`${registry}/${name}${isDigest ? '@' : ':'}${reference}`);
  return what === 'blobs' ? { kind: 'blob', ref, digest: reference } : { kind: 'manifest', ref, reference };
}
