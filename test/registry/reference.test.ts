import { describe, expect, it } from 'vitest';
import { isDfError } from '../../src/errors.js';
import { parseReference } from '../../src/registry/reference.js';

const D = `sha256:${'a'.repeat(64)}`;

describe('parseReference', () => {
  it.each([
    ['busybox', 'registry-1.docker.io', 'library/busybox', 'latest', undefined],
    ['busybox:1.36', 'registry-1.docker.io', 'library/busybox', '1.36', undefined],
    ['docker.io/busybox', 'registry-1.docker.io', 'library/busybox', 'latest', undefined],
    [
      'index.docker.io/library/python:3.12-slim',
      'registry-1.docker.io',
      'library/python',
      '3.12-slim',
      undefined,
    ],
    ['someone/app', 'registry-1.docker.io', 'someone/app', 'latest', undefined],
    ['ghcr.io/org/team/app:v1', 'ghcr.io', 'org/team/app', 'v1', undefined],
    ['localhost/app', 'localhost', 'app', 'latest', undefined],
    ['localhost:5000/app:x', 'localhost:5000', 'app', 'x', undefined],
    ['127.0.0.1:5000/a/b', '127.0.0.1:5000', 'a/b', 'latest', undefined],
    [`127.0.0.1:5000/a/b@${D}`, '127.0.0.1:5000', 'a/b', undefined, D],
    [`127.0.0.1:5000/a/b:t@${D}`, '127.0.0.1:5000', 'a/b', 't', D],
    ['[::1]:5000/app:t', '[::1]:5000', 'app', 't', undefined],
    ['my.registry/a__b/c-d/e.f:T_1', 'my.registry', 'a__b/c-d/e.f', 'T_1', undefined],
  ])('%s', (input, registry, repository, tag, digest) => {
    const r = parseReference(input);
    expect(r.registry).toBe(registry);
    expect(r.repository).toBe(repository);
    expect(r.tag).toBe(tag);
    expect(r.digest).toBe(digest);
  });

  it('formats and derives references', () => {
    const r = parseReference('busybox');
    expect(r.toString()).toBe('registry-1.docker.io/library/busybox:latest');
    expect(r.repoString).toBe('registry-1.docker.io/library/busybox');
    expect(r.reference).toBe('latest');
    const t = r.withTag('1.0-dfb');
    expect(t.toString()).toBe('registry-1.docker.io/library/busybox:1.0-dfb');
    const d = t.withDigest(D);
    expect(d.toString()).toBe(`registry-1.docker.io/library/busybox:1.0-dfb@${D}`);
    expect(d.reference).toBe(D);
    expect(parseReference(`h.io/x@${D}`).toString()).toBe(`h.io/x@${D}`);
    expect(parseReference(d.toString())).toEqual(d);
  });

  it.each([
    ['', /empty/],
    ['   ', /empty/],
    ['Busybox', /lowercase/],
    ['host.io/App', /lowercase/],
    ['host.io/', /empty/],
    ['host.io//x', /empty path component/],
    ['host.io/a-/b', /path component "a-"/],
    ['busybox:', /invalid tag/],
    ['busybox:-x', /invalid tag/],
    [`busybox:${'t'.repeat(129)}`, /invalid tag/],
    ['busybox@sha256:abc', /invalid digest/],
    ['busybox@md5:' + 'a'.repeat(32), /invalid digest/],
    ['https://host.io/app', /scheme/],
    ['host.io/a b', /whitespace/],
    ['ho_st.io/app', /invalid registry host/],
  ])('rejects %j', (input, why) => {
    let err: unknown;
    try {
      parseReference(input);
    } catch (e) {
      err = e;
    }
    expect(isDfError(err, 'INVALID_REFERENCE')).toBe(true);
    expect((err as Error).message).toMatch(why);
    expect((err as Error).message).toContain('invalid image reference');
  });

  it('validates withTag and withDigest arguments', () => {
    const r = parseReference('a.io/b');
    expect(() => r.withTag('bad tag')).toThrow(/invalid tag/);
    expect(() => r.withDigest('sha256:xyz')).toThrow(/invalid digest/);
  });
});
