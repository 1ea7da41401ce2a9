import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { MediaTypes, parseManifestOrIndex } from '../../src/registry/oci.js';
import {
  MAX_TOKEN_LENGTH,
  MAX_TOKEN_LIFETIME_S,
  parseTokenResponse,
} from '../../src/registry/token-response.js';
import { parseWwwAuthenticate } from '../../src/registry/www-authenticate.js';
import { params, returnsOrDfErrorSync, timeoutFor } from './fuzz.js';

// Registries and token servers may be wrong or hostile: their manifests, indexes, challenges and token
// answers parse to well-formed values or to a DfError, never another exception.

const hex64 = fc.stringMatching(/^[0-9a-f]{64}$/);
const digestish = fc.oneof(
  hex64.map((h) => `sha256:${h}`),
  fc.constantFrom('sha256:../../x', 'sha512:' + 'a'.repeat(128), '', 'sha256:'),
  fc.string({ maxLength: 20 }),
);
const descriptor = fc.record(
  {
    mediaType: fc.oneof(fc.constantFrom(...Object.values(MediaTypes)), fc.string({ maxLength: 10 })),
    digest: digestish,
    size: fc.oneof(fc.nat(), fc.integer(), fc.double(), fc.constant(Number.MAX_SAFE_INTEGER + 2)),
    annotations: fc.dictionary(
      fc.string({ maxLength: 8 }),
      fc.oneof(fc.string({ maxLength: 8 }), fc.integer()),
    ),
    platform: fc.record(
      {
        os: fc.string({ maxLength: 6 }),
        architecture: fc.string({ maxLength: 6 }),
        variant: fc.string({ maxLength: 4 }),
      },
      { requiredKeys: [] },
    ),
  },
  { requiredKeys: [] },
);
const manifestLike = fc.oneof(
  fc.record(
    {
      schemaVersion: fc.oneof(fc.constant(2), fc.integer()),
      mediaType: fc.oneof(fc.constantFrom(...Object.values(MediaTypes)), fc.string({ maxLength: 10 })),
      config: fc.oneof(descriptor, fc.jsonValue()),
      layers: fc.oneof(fc.array(descriptor, { maxLength: 4 }), fc.jsonValue()),
      manifests: fc.oneof(fc.array(descriptor, { maxLength: 4 }), fc.jsonValue()),
    },
    { requiredKeys: [] },
  ),
  fc.jsonValue(),
);

describe('fuzz: registry responses', () => {
  it(
    'manifests and indexes parse to checked shapes or a DfError',
    () => {
      fc.assert(
        fc.property(
          fc.oneof(
            manifestLike.map((j) => Buffer.from(JSON.stringify(j) ?? 'null')),
            fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a)),
          ),
          fc.option(fc.constantFrom(...Object.values(MediaTypes))),
          (bytes, mt) => {
            const r = returnsOrDfErrorSync(() =>
              parseManifestOrIndex(bytes, mt ?? undefined, 'fuzzed manifest'),
            );
            if (r instanceof DfError) return;
            const descs = r.kind === 'index' ? r.index.manifests : [r.manifest.config, ...r.manifest.layers];
            for (const d of descs) {
              expect(d.digest).toMatch(/^sha256:[0-9a-f]{64}$/);
              expect(Number.isSafeInteger(d.size) && d.size >= 0).toBe(true);
            }
          },
        ),
        params(),
      );
    },
    timeoutFor(),
  );

  it(
    'WWW-Authenticate headers parse to lowercase schemes and parameter names, never throwing',
    () => {
      const piece = fc.oneof(
        fc.constantFrom(
          'Bearer',
          'Basic',
          'realm',
          'service',
          'scope',
          '=',
          ',',
          ' ',
          '"',
          '\\',
          '\t',
          'a==',
          'x',
        ),
        fc.string({ maxLength: 6 }),
      );
      fc.assert(
        fc.property(
          fc.oneof(
            fc.array(piece, { maxLength: 30 }).map((a) => a.join('')),
            fc.string({ maxLength: 60 }),
          ),
          fc.boolean(),
          (header, asArray) => {
            const cs = parseWwwAuthenticate(asArray ? [header, header] : header);
            for (const c of cs) {
              expect(c.scheme).toBe(c.scheme.toLowerCase());
              expect(c.scheme.length).toBeGreaterThan(0);
              for (const k of Object.keys(c.params)) expect(k).toBe(k.toLowerCase());
            }
          },
        ),
        params(),
      );
    },
    timeoutFor(),
  );

  it(
    'token answers give a header-safe token with a bounded lifetime, or a REGISTRY error',
    () => {
      const tokenish = fc.oneof(
        fc.string({ maxLength: 20 }),
        fc.constantFrom('abc\r\nX: y', 'tok en', 'é', ''),
        fc.jsonValue(),
      );
      const answer = fc.oneof(
        fc
          .record(
            {
              token: tokenish,
              access_token: tokenish,
              expires_in: fc.oneof(fc.double(), fc.integer(), fc.jsonValue(), fc.constant('1e999')),
            },
            { requiredKeys: [] },
          )
          .map((o) => JSON.stringify(o).replace('"1e999"', '1e999')),
        fc.jsonValue().map((j) => JSON.stringify(j) ?? ''),
        fc.string({ maxLength: 40 }),
      );
      fc.assert(
        fc.property(answer, (text) => {
          const r = returnsOrDfErrorSync(() => parseTokenResponse(text, 'auth.test', 'reg.test/a'));
          if (r instanceof DfError) {
            expect(r.code).toBe('REGISTRY');
            return;
          }
          expect(r.token).toMatch(/^[\x21-\x7e]+$/);
          expect(r.token.length).toBeLessThanOrEqual(MAX_TOKEN_LENGTH);
          expect(r.lifetimeS > 0 && r.lifetimeS <= MAX_TOKEN_LIFETIME_S).toBe(true);
        }),
        params(),
      );
    },
    timeoutFor(),
  );
});
