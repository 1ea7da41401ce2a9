import { describe, expect, it } from 'vitest';
import { MAX_TARGET, parseMirrorRoute } from '../../src/mirror/route.js';

const D = `sha256:${'a'.repeat(64)}`;
const HUB = 'registry-1.docker.io';

describe('parseMirrorRoute', () => {
  it('takes the registry from ?ns= (containerd hosts.toml)', () => {
    const r = parseMirrorRoute(`/v2/library/busybox/manifests/1.36?ns=docker.io`, 'x.example');
    expect(r.kind).toBe('manifest');
    if (r.kind !== 'manifest') return;
    expect(r.ref.registry).toBe(HUB);
    expect(r.ref.repository).toBe('library/busybox');
    expect(r.reference).toBe('1.36');
    const b = parseMirrorRoute(`/v2/team/app/blobs/${D}?ns=127.0.0.1:5000`, HUB);
    expect(b).toMatchObject({ kind: 'blob', digest: D });
    if (b.kind === 'blob') expect(b.ref.repoString).toBe('127.0.0.1:5000/team/app');
  });

  it('takes a host-like first path component as the registry (podman/CRI-O mirror locations)', () => {
    const r = parseMirrorRoute(`/v2/ghcr.io/org/tool/manifests/${D}`, HUB);
    expect(r.kind === 'manifest' && r.ref.repoString).toBe('ghcr.io/org/tool');
  });

  it('falls back to the default registry (Docker registry-mirrors)', () => {
    const r = parseMirrorRoute('/v2/library/alpine/manifests/latest', HUB);
    expect(r.kind === 'manifest' && r.ref.repoString).toBe(`${HUB}/library/alpine`);
    expect(parseMirrorRoute('/v2/', HUB)).toEqual({ kind: 'base', registry: HUB });
    expect(parseMirrorRoute('/v2/?ns=quay.io', HUB)).toEqual({ kind: 'base', registry: 'quay.io' });
  });

  it("names Docker Hub's registry by the host its references resolve to, on every route", () => {
    // a /v2/ probe for docker.io goes to the registry that serves it, as its manifests and blobs do
    expect(parseMirrorRoute('/v2/?ns=docker.io', 'x.example')).toEqual({ kind: 'base', registry: HUB });
    expect(parseMirrorRoute('/v2/', 'Index.Docker.io')).toEqual({ kind: 'base', registry: HUB });
    const b = parseMirrorRoute(`/v2/docker.io/library/busybox/blobs/${D}`, 'x.example');
    expect(b.kind === 'blob' && b.ref.registry).toBe(HUB);
    expect(() => parseMirrorRoute('/v2/?ns=evil.example/path', HUB)).toThrow(/invalid registry/);
  });

  it('refuses what is not a well-formed pull', () => {
    const bad = (t: string, code: string) => {
      try {
        parseMirrorRoute(t, HUB);
      } catch (e) {
        expect((e as { code: string }).code).toBe(code);
        return;
      }
      throw new Error(`accepted ${t}`);
    };
    bad('/v2/library/busybox/tags/list', 'NOT_FOUND');
    bad('/v1/search', 'NOT_FOUND');
    bad('/v2/library/busybox/blobs/latest', 'INVALID_ARGUMENT');
    bad('/v2/library/busybox/blobs/sha256:xyz', 'INVALID_REFERENCE');
    bad('/v2/Library/BusyBox/manifests/1', 'INVALID_REFERENCE');
    bad('/v2/a/../b/manifests/1', 'INVALID_ARGUMENT');
    bad('/v2/a/%2e%2e/b/manifests/1', 'INVALID_ARGUMENT');
    bad('/v2/library/busybox/manifests/1?ns=evil.example/path', 'INVALID_ARGUMENT');
    bad('/v2/library/busybox/manifests/bad%20tag', 'INVALID_REFERENCE');
    bad(`/v2/${'a/'.repeat(MAX_TARGET)}manifests/1`, 'INVALID_ARGUMENT');
  });
});
