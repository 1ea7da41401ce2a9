import { DfError } from '../errors.js';

/** The host that `docker.io/...` and bare names like `busybox` resolve to. */
export const DOCKER_HUB_REGISTRY = 'registry-1.docker.io';

const DOCKER_HUB_ALIASES = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io']);

/**
 * A registry host as references resolve it, for comparing with lists users write (`mirror.registries`,
 * `p2p.seedRegistries`): lowercase, and Docker Hub's names (`docker.io`, `index.docker.io`) as the host
 * its references resolve to (`registry-1.docker.io`).
 */
export function canonicalRegistry(host: string): string {
  const h = host.toLowerCase();
  return DOCKER_HUB_ALIASES.has(h) ? DOCKER_HUB_REGISTRY : h;
}

// The grammar of github.com/distribution/reference, without the parts nobody uses.
const HOST_RE =
  /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]{1,5})?$/;
const PATH_COMPONENT_RE = /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$/;
const TAG_RE = /^[\w][\w.-]{0,127}$/;
const DIGEST_RE = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;
const MAX_NAME_LENGTH = 255;

/** A parsed image reference: `host[:port]/repo[:tag][@digest]`. */
export class ImageReference {
  constructor(
    /** Registry host with optional port, e.g. `registry-1.docker.io`, `127.0.0.1:5000`. */
    readonly registry: string,
    /** Repository path, e.g. `library/busybox`. */
    readonly repository: string,
    readonly tag?: string,
    readonly digest?: string,
  ) {}

  /** `registry/repository`, without tag or digest. */
  get repoString(): string {
    return `${this.registry}/${this.repository}`;
  }

  /** What goes after `/manifests/`: the digest when there is one, else the tag. */
  get reference(): string {
    return this.digest ?? this.tag ?? 'latest';
  }

  withTag(tag: string): ImageReference {
    if (!TAG_RE.test(tag)) throw invalid(tag, `invalid tag "${tag}" (letters, digits, _ . -, at most 128)`);
    return new ImageReference(this.registry, this.repository, tag, undefined);
  }

  withDigest(digest: string): ImageReference {
    if (!DIGEST_RE.test(digest))
      throw invalid(digest, `invalid digest "${digest}" (expected sha256:<64 hex>)`);
    return new ImageReference(this.registry, this.repository, this.tag, digest);
  }

  /** Same registry, another repository (e.g. a mount source); no tag or digest. */
  withRepository(repository: string): ImageReference {
    validateRepository(repository, repository);
    return new ImageReference(this.registry, repository);
  }

  toString(): string {
    return `${this.repoString}${this.tag ? `:${this.tag}` : ''}${this.digest ? `@${this.digest}` : ''}`;
  }
}

function invalid(input: string, why: string): DfError {
  return new DfError('INVALID_REFERENCE', `invalid image reference "${input}": ${why}`, {
    details: { reference: input },
  });
}

function validateRepository(input: string, repo: string): void {
  if (repo.length === 0) throw invalid(input, 'empty repository name');
  if (repo.length > MAX_NAME_LENGTH)
    throw invalid(input, `repository name longer than ${MAX_NAME_LENGTH} characters`);
  for (const part of repo.split('/')) {
    if (!PATH_COMPONENT_RE.test(part)) {
      throw invalid(
        input,
        part === ''
          ? 'empty path component in repository name'
          : `bad repository path component "${part}" (lowercase letters, digits and single . _ __ - separators)`,
      );
    }
  }
}

/**
 * Parses `host[:port]/repo[:tag][@sha256:...]` with Docker's defaults: no host means Docker Hub
 * (`busybox` → `registry-1.docker.io/library/busybox:latest`), no tag and no digest means `latest`.
 */
export function parseReference(input: string): ImageReference {
  if (typeof input !== 'string' || input.trim() === '') throw invalid(String(input), 'empty reference');
  const s = input.trim();
  if (/\s/.test(s)) throw invalid(s, 'contains whitespace');
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(s)) throw invalid(s, 'drop the URL scheme (write host/repo:tag)');

  let rest = s;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_RE.test(digest)) throw invalid(s, `invalid digest "${digest}" (expected sha256:<64 hex>)`);
  }

  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) throw invalid(s, `invalid tag "${tag}" (letters, digits, _ . -, at most 128)`);
  }

  let registry: string;
  let repository: string;
  const slash = rest.indexOf('/');
  const first = slash >= 0 ? rest.slice(0, slash) : '';
  if (
    slash >= 0 &&
    (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase())
  ) {
    registry = first;
    repository = rest.slice(slash + 1);
    if (!HOST_RE.test(registry)) throw invalid(s, `invalid registry host "${registry}"`);
  } else {
    registry = DOCKER_HUB_REGISTRY;
    repository = rest;
  }
  if (DOCKER_HUB_ALIASES.has(registry.toLowerCase())) {
    registry = DOCKER_HUB_REGISTRY;
    if (repository !== '' && !repository.includes('/')) repository = `library/${repository}`;
  }
  if (
    repository !== repository.toLowerCase() &&
    PATH_COMPONENT_RE.test(repository.toLowerCase().split('/')[0] ?? '')
  ) {
    throw invalid(s, 'repository name must be lowercase');
  }
  validateRepository(s, repository);

  if (tag === undefined && digest === undefined) tag = 'latest';
  return new ImageReference(registry, repository, tag, digest);
}
