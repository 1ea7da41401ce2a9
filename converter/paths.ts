import { DfError } from '../src/errors.js';

/**
 * Normalizes a tar entry name to a relative path without `.`/empty components ('' is the root).
 * A name that climbs out of the root (`..`) is an error: such a layer would write outside the container.
 */
export function normalizeTarPath(name: string, offset?: number): string {
  const parts: string[] = [];
  for (const p of name.split('/')) {
    if (p === '' || p === '.') continue;
    if (p === '..')
      throw DfError.corrupt(
        `layer entry ${JSON.stringify(name)}${offset !== undefined ? ` at byte ${offset}` : ''} escapes the layer root with '..'`,
      );
    parts.push(p);
  }
  return parts.join('/');
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';
const WHITEOUT_META_PREFIX = '.wh..wh.';

export type WhiteoutKind =
  { kind: 'none' } | { kind: 'opaque'; dir: string } | { kind: 'whiteout'; path: string } | { kind: 'meta' };

/** Classifies a normalized path as an overlay whiteout, an opaque marker, aufs metadata or an ordinary entry. */
export function classifyWhiteout(path: string): WhiteoutKind {
  const slash = path.lastIndexOf('/');
  const dir = slash < 0 ? '' : path.slice(0, slash);
  const base = slash < 0 ? path : path.slice(slash + 1);
  if (!base.startsWith(WHITEOUT_PREFIX)) return { kind: 'none' };
  if (base === OPAQUE_MARKER) return { kind: 'opaque', dir };
  // Other .wh..wh. names are aufs bookkeeping (e.g. .wh..wh.plnk); containerd ignores them as well.
  if (base.startsWith(WHITEOUT_META_PREFIX)) return { kind: 'meta' };
  const target = base.slice(WHITEOUT_PREFIX.length);
  if (!target) return { kind: 'meta' };
  return { kind: 'whiteout', path: dir ? `${dir}/${target}` : target };
}
