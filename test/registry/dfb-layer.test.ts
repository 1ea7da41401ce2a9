// dfbLayerOf: a DFB layer descriptor's annotations, of which the TOC offset is only a hint.
import { describe, expect, it } from 'vitest';
import { Annotations, DFB_LAYER_MEDIA_TYPE } from '../../src/blob/types.js';
import { dfbLayerOf } from '../../src/registry/image.js';

const digest = 'sha256:' + 'a'.repeat(64);
const layer = (offset?: string) => ({
  mediaType: DFB_LAYER_MEDIA_TYPE,
  digest,
  size: 10_000,
  annotations: (offset === undefined ? {} : { [Annotations.tocOffset]: offset }) as Record<string, string>,
});

describe('dfbLayerOf', () => {
  it('takes a decimal TOC offset inside the blob as the hint', () => {
    expect(dfbLayerOf(layer('9000')).tocOffset).toBe(9000);
    expect(dfbLayerOf(layer('0')).tocOffset).toBe(0);
  });

  it('ignores a missing, malformed or out-of-range offset (the footer is read instead)', () => {
    for (const bad of [undefined, '', '-1', '1e3', '0x10', ' 12', '12.5', '10000', '99999999999999999999'])
      expect(dfbLayerOf(layer(bad)).tocOffset, String(bad)).toBeUndefined();
  });
});
