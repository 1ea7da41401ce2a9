import { describe, expect, it } from 'vitest';
import { fuseOptionString } from '../../src/fuse/fuse-native-binding.js';
import { isFuseType, readMountInfo } from '../../src/fuse/mounts.js';
import { RateLimitedLog } from '../../src/fuse/rate-limited-log.js';

describe('mountinfo', () => {
  it('parses FUSE mounts, escaped paths and optional fields', () => {
    const text = [
      '22 1 0:21 / /proc rw,nosuid shared:5 - proc proc rw',
      '42 27 0:39 / /tmp/a\\040b/mnt ro,nosuid,nodev,relatime shared:7 master:1 - fuse.dfb dfnode:abc ro,user_id=0',
    ].join('\n');
    const m = readMountInfo(text);
    expect(m).toHaveLength(2);
    expect(m[1]).toEqual({
      mountId: 42,
      major: 0,
      minor: 39,
      mountpoint: '/tmp/a b/mnt',
      fstype: 'fuse.dfb',
      source: 'dfnode:abc',
    });
    expect(isFuseType(m[1]!.fstype)).toBe(true);
    expect(isFuseType(m[0]!.fstype)).toBe(false);
  });

  it('reads this process mount table', () => {
    expect(readMountInfo().some((m) => m.mountpoint === '/')).toBe(true);
  });
});

describe('fuse options', () => {
  it('read-only, use_ino, long caches, dfnode/dfb names', () => {
    const s = fuseOptionString({ fsname: 'dfnode:sha256,x', cacheTimeoutSec: 86400, allowOther: true });
    expect(s.startsWith('-o')).toBe(true);
    const o = s.slice(2).split(',');
    for (const want of [
      'ro',
      'use_ino',
      'kernel_cache',
      'entry_timeout=86400',
      'attr_timeout=86400',
      'default_permissions',
      'subtype=dfb',
      'allow_other',
      'max_read=131072',
    ]) {
      expect(o).toContain(want);
    }
    expect(o).toContain('fsname=dfnode:sha256_x');
  });
});

describe('rate-limited log', () => {
  it('logs a burst per window, then one summary line', () => {
    const lines: unknown[] = [];
    const logger = { error: (o: unknown, msg: string) => lines.push([o, msg]) } as never;
    let now = 0;
    const log = new RateLimitedLog(logger, 3, 1000, () => now);
    for (let i = 0; i < 10; i++) log.error({ i }, 'x');
    expect(lines).toHaveLength(3);
    now = 1000;
    log.error({}, 'y');
    expect(lines).toHaveLength(5);
    expect(lines[3]).toEqual([{ suppressed: 7 }, 'fuse: more handler errors were not logged']);
  });
});
