import { describe, expect, it } from 'vitest';
import {
  cgroupPathOf,
  containerOfCgroup,
  MAX_CGROUP_LINE,
  startTimeOf,
} from '../../src/containerd/cgroup.js';

const CRI_ID = 'a'.repeat(24) + '0123456789abcdef'.repeat(2) + 'b'.repeat(8);

describe('cgroupPathOf', () => {
  it('takes the unified line of cgroup v2', () => {
    expect(cgroupPathOf('0::/default/web\n')).toBe('/default/web');
  });

  it('takes the pids hierarchy of cgroup v1, then memory', () => {
    const v1 = '12:memory:/m/x\n5:pids:/default/web\n1:name=systemd:/system.slice/s\n';
    expect(cgroupPathOf(v1)).toBe('/default/web');
    expect(cgroupPathOf('3:cpu,cpuacct:/c/y\n4:memory:/default/db\n')).toBe('/default/db');
  });

  it('on a hybrid host, takes the v1 pids hierarchy over the unified line', () => {
    expect(
      cgroupPathOf('8:pids:/default/web\n4:memory:/default/web\n0::/system.slice/containerd.service\n'),
    ).toBe('/default/web');
  });

  it('skips lines that are too long or malformed, and answers undefined when nothing fits', () => {
    const huge = '0::/' + 'x'.repeat(MAX_CGROUP_LINE) + '\n';
    expect(cgroupPathOf(huge)).toBeUndefined();
    expect(cgroupPathOf(huge + '0::/default/ok\n')).toBe('/default/ok');
    expect(cgroupPathOf('')).toBeUndefined();
    expect(cgroupPathOf('garbage\n::\nx::/a/b\n0::relative\n')).toBeUndefined();
    expect(cgroupPathOf('\u0000\u0001:\n'.repeat(10_000))).toBeUndefined();
  });
});

describe('containerOfCgroup', () => {
  it("reads ctr's default /<namespace>/<id>", () => {
    expect(containerOfCgroup('/default/web-1')).toEqual({ id: 'web-1', namespace: 'default', form: 'ctr' });
  });

  it('reads CRI paths: a systemd scope and a cgroupfs kubepods path', () => {
    expect(
      containerOfCgroup(
        `/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/cri-containerd-${CRI_ID}.scope`,
      ),
    ).toEqual({ id: CRI_ID, namespace: 'k8s.io', form: 'cri-systemd' });
    expect(containerOfCgroup(`/kubepods/besteffort/pod5678/${CRI_ID}`)).toEqual({
      id: CRI_ID,
      namespace: 'k8s.io',
      form: 'kubepods',
    });
  });

  it('drops leading /.. (a daemon in its own cgroup namespace)', () => {
    expect(containerOfCgroup('/../../default/web')).toEqual({ id: 'web', namespace: 'default', form: 'ctr' });
  });

  it('answers undefined for the host, systemd units and unknown forms', () => {
    for (const p of [
      '/',
      '/user.slice/user-0.slice',
      '/system.slice/containerd.service',
      '/init.scope',
      '/a/b/c',
      '/kubepods/besteffort/pod1/pause',
      '/default/../etc',
      '/default/bad id',
      '/default/' + 'x'.repeat(77),
      'default/web',
      '/kubepods.slice/cri-containerd-.scope',
    ])
      expect(containerOfCgroup(p), p).toBeUndefined();
  });
});

describe('startTimeOf', () => {
  const fields = (comm: string) =>
    `42 (${comm}) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615`;

  it('reads field 22 after the command name, whatever the name holds', () => {
    expect(startTimeOf(fields('sh'))).toBe(987654);
    expect(startTimeOf(fields('a) b (c'))).toBe(987654);
  });

  it('answers undefined for text that does not parse', () => {
    expect(startTimeOf('')).toBeUndefined();
    expect(startTimeOf('42 (x) S 1')).toBeUndefined();
    expect(startTimeOf('no parens at all 1 2 3')).toBeUndefined();
  });
});
