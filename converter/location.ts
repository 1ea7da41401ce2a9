import { DfError } from '../src/errors.js';
import { parseReference, type ImageReference } from '../src/registry/reference.js';

export type ImageLocation =
  | { kind: 'registry'; ref: ImageReference; text: string }
  | { kind: 'oci'; dir: string; tag: string | undefined; text: string }
  | { kind: 'docker-archive'; file: string; name: string | undefined; text: string };

const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;

/** Parses `REGISTRY/REPO[:TAG][@DIGEST]`, `oci:DIR[:TAG]` or `docker-archive:FILE[:NAME:TAG]`. */
export function parseLocation(text: string): ImageLocation {
  if (text.startsWith('oci:')) {
    const rest = text.slice(4);
    if (!rest)
      throw new DfError('INVALID_REFERENCE', `"${text}": oci: needs a directory, e.g. oci:./image:latest`);
    const i = rest.lastIndexOf(':');
    if (i > 0 && TAG_RE.test(rest.slice(i + 1)) && !rest.slice(i + 1).includes('/'))
      return { kind: 'oci', dir: rest.slice(0, i), tag: rest.slice(i + 1), text };
    return { kind: 'oci', dir: rest, tag: undefined, text };
  }
  if (text.startsWith('docker-archive:')) {
    const rest = text.slice('docker-archive:'.length);
    if (!rest) throw new DfError('INVALID_REFERENCE', `"${text}": docker-archive: needs a file name`);
    // docker-archive:FILE[:name:tag] as in skopeo; FILE itself may not contain ':'.
    const i = rest.indexOf(':');
    if (i > 0) return { kind: 'docker-archive', file: rest.slice(0, i), name: rest.slice(i + 1), text };
    return { kind: 'docker-archive', file: rest, name: undefined, text };
  }
  if (text.startsWith('docker://')) text = text.slice('docker://'.length);
  return { kind: 'registry', ref: parseReference(text), text };
}

/** DST defaults to the same repository (or layout) with tag `<tag>-dfb`. */
export function defaultDestination(src: ImageLocation): ImageLocation {
  switch (src.kind) {
    case 'registry': {
      const tag = src.ref.tag
        ? `${src.ref.tag}-dfb`
        : `${src.ref.digest!.replace(':', '-').slice(0, 19)}-dfb`;
      const ref = src.ref.withTag(tag);
      return { kind: 'registry', ref, text: ref.toString() };
    }
    case 'oci': {
      const tag = `${src.tag ?? 'latest'}-dfb`;
      return { kind: 'oci', dir: src.dir, tag, text: `oci:${src.dir}:${tag}` };
    }
    case 'docker-archive':
      throw DfError.invalidArgument(
        `a destination is required for ${src.text}: give a registry reference or oci:DIR[:TAG]`,
      );
  }
}
