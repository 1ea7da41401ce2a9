import { describe, expect, it } from 'vitest';
import { MAX_PREHEAT_REFS, preheatRefs } from '../../src/p2p/preheat-request.js';

const manifest = 'application/vnd.docker.distribution.manifest.v2+json';

describe('preheat request bodies', () => {
  it("reads dfnode's own form, registry notifications and Harbor webhooks, without duplicates", () => {
    expect(
      preheatRefs({
        image: 'r.example/a:1',
        images: ['r.example/a:1', 'r.example/b@sha256:' + 'a'.repeat(64)],
      }),
    ).toEqual(['r.example/a:1', 'r.example/b@sha256:' + 'a'.repeat(64)]);
    const digest = 'sha256:' + 'b'.repeat(64);
    expect(
      preheatRefs({
        events: [
          {
            action: 'pull',
            target: { mediaType: manifest, repository: 'x', tag: '1' },
            request: { host: 'r:5000' },
          },
          {
            action: 'push',
            target: { mediaType: 'application/octet-stream', repository: 'x', digest },
            request: { host: 'r:5000' },
          },
          {
            action: 'push',
            target: { mediaType: manifest, repository: 'team/x', digest },
            request: { host: 'r:5000' },
          },
          'junk',
          {
            action: 'push',
            target: { mediaType: manifest, repository: 'team/x', tag: 'v2' },
            request: { host: 'r:5000' },
          },
        ],
      }),
    ).toEqual([`r:5000/team/x@${digest}`, 'r:5000/team/x:v2']);
    expect(
      preheatRefs({
        type: 'PUSH_ARTIFACT',
        event_data: { resources: [{ resource_url: 'harbor.example/library/app:1.2' }, { digest: 'x' }] },
      }),
    ).toEqual(['harbor.example/library/app:1.2']);
  });

  it('refuses what names nothing, wrong types and too many images', () => {
    expect(() => preheatRefs(null)).toThrow(/JSON object/);
    expect(() => preheatRefs([1])).toThrow(/JSON object/);
    expect(() => preheatRefs({})).toThrow(/names no image/);
    expect(() => preheatRefs({ events: [{ action: 'delete' }] })).toThrow(/names no image/);
    expect(() => preheatRefs({ image: 7 })).toThrow(/image reference/);
    expect(() => preheatRefs({ image: 'x'.repeat(600) })).toThrow(/image reference/);
    expect(() => preheatRefs({ images: 'a/b:1' })).toThrow(/list/);
    const many = Array.from({ length: MAX_PREHEAT_REFS + 1 }, (_, i) => `r/x:${i}`);
    expect(() => preheatRefs({ images: many })).toThrow(/more than 64/);
    expect(() =>
      preheatRefs({
        events: many.map((_r, i) => ({
          action: 'push',
          target: { mediaType: manifest, repository: 'x', tag: String(i) },
          request: { host: 'h' },
        })),
      }),
    ).toThrow(/more than 64/);
  });
});
