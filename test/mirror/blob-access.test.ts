import { describe, expect, it } from 'vitest';
import { BlobAccess, credentialKey, manifestDigests } from '../../src/mirror/blob-access.js';
import { parseRange } from '../../src/mirror/mirror-blobs.js';

const D1 = 'sha256:' + '1'.repeat(64);
const D2 = 'sha256:' + '2'.repeat(64);

describe('BlobAccess', () => {
  it('allows a credential only for a repository the registry said yes to, a known digest, within the age', () => {
    const a = new BlobAccess();
    const alice = credentialKey('Bearer alice');
    a.grant(alice, 'r.io/app', 1000);
    a.learn('r.io/app', [D1]);
    expect(a.allowed(alice, 'r.io/app', D1, 500, 1400)).toBe(true);
    expect(a.allowed(alice, 'r.io/app', D1, 500, 1600)).toBe(false);
    // another credential, none, another repository, a digest not known in the repository
    expect(a.allowed(credentialKey('Bearer bob'), 'r.io/app', D1, 500, 1100)).toBe(false);
    expect(a.allowed(credentialKey(undefined), 'r.io/app', D1, 500, 1100)).toBe(false);
    expect(a.allowed(alice, 'r.io/other', D1, 500, 1100)).toBe(false);
    expect(a.allowed(alice, 'r.io/app', D2, 500, 1100)).toBe(false);
    // an older yes remembered again (a manifest read back from disk) does not move a newer one back
    a.grant(alice, 'r.io/app', 1300);
    a.grant(alice, 'r.io/app', 200);
    expect(a.allowed(alice, 'r.io/app', D1, 500, 1700)).toBe(true);
  });

  it('is bounded: the oldest grants and digests go first', () => {
    const a = new BlobAccess(2, 2, 2);
    for (const c of ['a', 'b', 'c']) a.grant(c, 'r/x', 0);
    a.learn('r/x', [D1, D2, 'sha256:' + '3'.repeat(64)]);
    expect(a.allowed('a', 'r/x', D2, 10, 0)).toBe(false);
    expect(a.allowed('c', 'r/x', D2, 10, 0)).toBe(true);
    expect(a.allowed('c', 'r/x', D1, 10, 0)).toBe(false);
  });

  it('reads the digests a manifest or an index names; nothing from garbage', () => {
    const m = Buffer.from(JSON.stringify({ config: { digest: D1 }, layers: [{ digest: D2 }, { size: 3 }] }));
    expect(manifestDigests(m)).toEqual([D1, D2]);
    expect(manifestDigests(Buffer.from(JSON.stringify({ manifests: [{ digest: D2 }] })))).toEqual([D2]);
    expect(manifestDigests(Buffer.from('not json'))).toEqual([]);
    expect(manifestDigests(Buffer.from('null'))).toEqual([]);
  });
});

describe('parseRange', () => {
  it('answers one range, clamps its end, and refuses what lies beyond the blob', () => {
    expect(parseRange(undefined, 100)).toBeUndefined();
    expect(parseRange('bytes=10-19', 100)).toEqual([10, 20]);
    expect(parseRange('bytes=10-', 100)).toEqual([10, 100]);
    expect(parseRange('bytes=90-500', 100)).toEqual([90, 100]);
    expect(parseRange('bytes=-10', 100)).toEqual([90, 100]);
    expect(parseRange('bytes=100-', 100)).toBe('unsatisfiable');
    expect(parseRange('bytes=20-10', 100)).toBe('unsatisfiable');
    // several ranges or another unit: the whole blob
    expect(parseRange('bytes=0-1,5-6', 100)).toBeUndefined();
    expect(parseRange('items=0-1', 100)).toBeUndefined();
  });
});
