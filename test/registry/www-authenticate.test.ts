import { describe, expect, it } from 'vitest';
import { parseWwwAuthenticate } from '../../src/registry/www-authenticate.js';

describe('parseWwwAuthenticate', () => {
  it('parses a Docker Hub bearer challenge', () => {
    expect(
      parseWwwAuthenticate(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
      ),
    ).toEqual([
      {
        scheme: 'bearer',
        params: {
          realm: 'https://auth.docker.io/token',
          service: 'registry.docker.io',
          scope: 'repository:library/busybox:pull',
        },
      },
    ]);
  });

  it('parses basic, spacing, case, unquoted values and escapes', () => {
    expect(parseWwwAuthenticate('Basic realm="Registry Realm"')).toEqual([
      { scheme: 'basic', params: { realm: 'Registry Realm' } },
    ]);
    expect(parseWwwAuthenticate('BEARER  Realm = "a\\"b" , Service=svc,error="insufficient_scope"')).toEqual([
      { scheme: 'bearer', params: { realm: 'a"b', service: 'svc', error: 'insufficient_scope' } },
    ]);
    expect(
      parseWwwAuthenticate('Bearer realm="x",scope="repository:a:pull repository:b:pull,push"')[0]!.params
        .scope,
    ).toBe('repository:a:pull repository:b:pull,push');
  });

  it('parses several challenges in one header and in several headers', () => {
    const got = parseWwwAuthenticate('Basic realm="r1", Bearer realm="https://t/token",service="s"');
    expect(got.map((c) => c.scheme)).toEqual(['basic', 'bearer']);
    expect(got[1]!.params).toEqual({ realm: 'https://t/token', service: 's' });
    expect(parseWwwAuthenticate(['Basic realm="a"', 'Bearer realm="b"']).map((c) => c.params.realm)).toEqual([
      'a',
      'b',
    ]);
  });

  it('handles token68 challenges, bare schemes and garbage', () => {
    expect(parseWwwAuthenticate('Negotiate abc123==')).toEqual([
      { scheme: 'negotiate', params: { token68: 'abc123==' } },
    ]);
    expect(parseWwwAuthenticate('Basic')).toEqual([{ scheme: 'basic', params: {} }]);
    expect(parseWwwAuthenticate('Basic, Bearer realm="x"').map((c) => c.scheme)).toEqual(['basic', 'bearer']);
    expect(parseWwwAuthenticate(undefined)).toEqual([]);
    expect(parseWwwAuthenticate('')).toEqual([]);
    expect(parseWwwAuthenticate('Bearer realm="unterminated')).toEqual([
      { scheme: 'bearer', params: { realm: 'unterminated' } },
    ]);
  });
});
