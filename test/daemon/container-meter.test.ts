import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ContainerInfo, ContainerLookup } from '../../src/containerd/containers.js';
import { ContainerMeter, type ContainerLabels } from '../../src/daemon/container-meter.js';
import { HostProcReader, readBounded, type ProcReader } from '../../src/daemon/proc-reader.js';

/** A fake /proc: pid → {start, cgroup}; `onCgroup` runs while a cgroup file is being read. */
class FakeProc implements ProcReader {
  procs = new Map<number, { start: number; cgroup: string }>();
  alive = new Map<string, boolean>();
  cgroupReads = 0;
  onCgroup?: (pid: number) => void;

  async startTime(pid: number) {
    return this.procs.get(pid)?.start;
  }
  async cgroup(pid: number) {
    this.cgroupReads++;
    const text = this.procs.get(pid)?.cgroup;
    this.onCgroup?.(pid);
    return text;
  }
  async cgroupAlive(path: string) {
    return this.alive.get(path);
  }
}

class FakeContainerd implements ContainerLookup {
  containers = new Map<string, ContainerInfo>();
  gets = 0;
  add(namespace: string, id: string, image: string, labels: Record<string, string> = {}) {
    this.containers.set(`${namespace}/${id}`, { namespace, id, image, labels });
  }
  async get(namespace: string, id: string) {
    this.gets++;
    return this.containers.get(`${namespace}/${id}`);
  }
  async namespaces() {
    return [...new Set([...this.containers.values()].map((c) => c.namespace))];
  }
}

function sinkLog() {
  const blocked = new Map<string, number>();
  const removed: ContainerLabels[] = [];
  return {
    blocked,
    removed,
    sink: {
      blocked: (l: ContainerLabels, s: number) =>
        blocked.set(l.container, (blocked.get(l.container) ?? 0) + s),
      remove: (l: ContainerLabels) => {
        removed.push(l);
        blocked.delete(l.container);
      },
    },
  };
}

function setup(opts: Partial<ConstructorParameters<typeof ContainerMeter>[0]> = {}) {
  const proc = new FakeProc();
  const ctd = new FakeContainerd();
  const s = sinkLog();
  const meter = new ContainerMeter({ proc, lookup: ctd, sink: s.sink, sweepMs: 0, ...opts });
  return { proc, ctd, meter, ...s };
}

describe('ContainerMeter', () => {
  it('attributes blocked time to the containerd container of the reader, with its image and CRI labels', async () => {
    const { proc, ctd, meter, blocked } = setup();
    const criId = 'c'.repeat(64);
    proc.procs.set(100, { start: 1, cgroup: '0::/default/web\n' });
    proc.procs.set(200, { start: 2, cgroup: `0::/kubepods.slice/cri-containerd-${criId}.scope\n` });
    ctd.add('default', 'web', 'registry.local/web:1');
    ctd.add('k8s.io', criId, 'docker.io/library/python:3', {
      'io.kubernetes.pod.name': 'api-0',
      'io.kubernetes.pod.namespace': 'prod',
      'io.kubernetes.container.name': 'api',
    });
    meter.blocked(100, 250);
    meter.blocked(100, 750);
    meter.blocked(200, 40);
    await meter.settled();
    expect(blocked.get('web')).toBeCloseTo(1.0);
    expect(blocked.get(criId)).toBeCloseTo(0.04);
    const top = meter.top();
    expect(top[0]).toMatchObject({
      container: 'web',
      image: 'registry.local/web:1',
      namespace: 'default',
      pod: '',
      reads: 2,
      blockedMs: 1000,
    });
    expect(top[1]).toMatchObject({
      container: criId,
      namespace: 'prod',
      pod: 'api-0',
      container_name: 'api',
      reads: 1,
    });
    expect(meter.unattributedReads).toBe(0);
  });

  it('counts pid 0, host processes and unknown containers as unattributed', async () => {
    const { proc, meter, blocked } = setup();
    proc.procs.set(1, { start: 1, cgroup: '0::/init.scope\n' });
    proc.procs.set(2, { start: 1, cgroup: '0::/default/not-in-containerd\n' });
    meter.blocked(0, 10);
    meter.blocked(1, 10);
    meter.blocked(2, 10);
    meter.blocked(3, 10); // no such process
    await meter.settled();
    expect(blocked.size).toBe(0);
    expect(meter.unattributedReads).toBe(4);
    expect(meter.unattributedMs).toBe(40);
  });

  it('does not attribute a process that exits mid-lookup, nor a pid reused by another process', async () => {
    const { proc, ctd, meter, blocked } = setup();
    ctd.add('default', 'a', 'img-a');
    ctd.add('default', 'b', 'img-b');
    proc.procs.set(7, { start: 10, cgroup: '0::/default/a\n' });
    // exits (and its pid goes to a process of container b) while its cgroup file is read
    proc.onCgroup = () => proc.procs.set(7, { start: 11, cgroup: '0::/default/b\n' });
    meter.blocked(7, 5);
    await meter.settled();
    expect(blocked.size).toBe(0);
    expect(meter.unattributedReads).toBe(1);
    proc.onCgroup = undefined;
    // now pid 7 is the process of b: cached as such
    meter.blocked(7, 5);
    await meter.settled();
    expect(blocked.get('b')).toBeCloseTo(0.005);
    // pid 7 reused again, by a process of a: the start time differs, so the cache entry is not trusted
    proc.procs.set(7, { start: 12, cgroup: '0::/default/a\n' });
    meter.blocked(7, 5);
    await meter.settled();
    expect(blocked.get('a')).toBeCloseTo(0.005);
    expect(blocked.get('b')).toBeCloseTo(0.005);
  });

  it('stays bounded under many short-lived pids and many containers', async () => {
    const { proc, ctd, meter } = setup({ maxPids: 64, maxCgroups: 32, maxContainers: 8, maxInflight: 16 });
    for (let i = 0; i < 20; i++) ctd.add('default', `c${i}`, 'img');
    for (let pid = 1; pid <= 5000; pid++) {
      proc.procs.set(pid, { start: pid, cgroup: `0::/default/c${pid % 20}\n` });
      meter.blocked(pid, 1);
      if (pid % 100 === 0) await meter.settled();
    }
    await meter.settled();
    const s = meter.sizes;
    expect(s.pids).toBeLessThanOrEqual(64);
    expect(s.cgroups).toBeLessThanOrEqual(32);
    expect(s.containers).toBe(8);
    expect(s.inflight).toBe(0);
    expect(meter.unattributedReads).toBeGreaterThan(0);
    const attributed = meter.top(100).reduce((a, c) => a + c.reads, 0);
    expect(attributed + meter.unattributedReads).toBe(5000);
  });

  it('drops the series of a container whose cgroup is gone or that containerd no longer has', async () => {
    const { proc, ctd, meter, blocked, removed } = setup();
    ctd.add('default', 'x', 'img-x');
    ctd.add('default', 'y', 'img-y');
    proc.procs.set(1, { start: 1, cgroup: '0::/default/x\n' });
    proc.procs.set(2, { start: 1, cgroup: '0::/default/y\n' });
    proc.alive.set('/default/x', true);
    meter.blocked(1, 10);
    meter.blocked(2, 10);
    await meter.settled();
    await meter.sweep();
    expect(
      meter
        .top()
        .map((c) => c.container)
        .sort(),
    ).toEqual(['x', 'y']);
    // y: the cgroup cannot be checked (undefined) and containerd deleted it; x: the cgroup went away
    ctd.containers.delete('default/y');
    await meter.sweep();
    expect(meter.top().map((c) => c.container)).toEqual(['x']);
    proc.alive.set('/default/x', false);
    await meter.sweep();
    expect(meter.top()).toEqual([]);
    expect(removed.map((l) => l.container).sort()).toEqual(['x', 'y']);
    expect(blocked.size).toBe(0);
    expect(meter.sizes.cgroups).toBe(0);
  });

  it('keeps label values bounded', async () => {
    const { proc, ctd, meter } = setup();
    ctd.add('default', 'z', 'i'.repeat(100_000), { 'io.kubernetes.pod.name': 'p'.repeat(10_000) });
    proc.procs.set(1, { start: 1, cgroup: '0::/default/z\n' });
    meter.blocked(1, 1);
    await meter.settled();
    const [c] = meter.top();
    expect(c!.image.length).toBeLessThanOrEqual(256);
    expect(c!.pod.length).toBeLessThanOrEqual(256);
  });
});

describe('readBounded', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dfnode-procread-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads a huge file up to the bound and drops the cut last line', async () => {
    const f = join(dir, 'cgroup');
    await writeFile(f, '0::/default/ok\n' + '1:x:/' + 'y'.repeat(200_000) + '\n');
    const text = await readBounded(f, 4096);
    expect(text).toBe('0::/default/ok\n');
    expect(await readBounded(join(dir, 'missing'))).toBeUndefined();
  });
});

describe('HostProcReader', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'dfnode-hostproc-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('reads this process: a start time, and a cgroup text that parses', async () => {
    const p = new HostProcReader();
    expect(await p.startTime(process.pid)).toBeGreaterThan(0);
    expect(await p.cgroup(process.pid)).toMatch(/^\d+:/);
    expect(await p.startTime(2 ** 31 - 1)).toBeUndefined();
  });

  it('survives hostile /proc files and tells live cgroups from gone ones', async () => {
    const proc = join(dir, 'proc');
    const cg = join(dir, 'cgroup');
    await mkdir(join(proc, '7'), { recursive: true });
    await mkdir(join(cg, 'default', 'live'), { recursive: true });
    await writeFile(join(cg, 'cgroup.controllers'), 'pids\n');
    await writeFile(join(proc, '7', 'stat'), '7 (' + ')'.repeat(10_000) + ' S 1');
    await writeFile(join(proc, '7', 'cgroup'), '0::/' + 'a/'.repeat(100_000) + '\n');
    const p = new HostProcReader(proc, cg);
    expect(await p.startTime(7)).toBeUndefined();
    const text = await p.cgroup(7);
    expect(text!.length).toBeLessThanOrEqual(64 * 1024);
    expect(await p.cgroupAlive('/default/live')).toBe(true);
    expect(await p.cgroupAlive('/default/gone')).toBe(false);
    expect(await p.cgroupAlive('/../default/live')).toBeUndefined();
  });

  it('meters a real process that is not in a container as unattributed', async () => {
    const meter = new ContainerMeter({
      proc: new HostProcReader(),
      lookup: new FakeContainerd(),
      sweepMs: 0,
    });
    meter.blocked(process.pid, 3);
    await meter.settled();
    expect(meter.top()).toEqual([]);
    expect(meter.unattributedReads).toBe(1);
  });
});
