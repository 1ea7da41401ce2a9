/**
 * Remote snapshots at the snapshotter's socket, with a RemoteLayers double in place of FUSE and a registry
 * (test/snapshotter/remote-layers.test.ts and the containerd integration tests run the real ones):
 * containerd's remote snapshot contract (ALREADY_EXISTS, committed under the target), the order of a remote
 * Prepare (active snapshot recorded before the mount, undone on failure, removed after a crash), and the
 * check of the remote layers below a container's snapshot (a dead one mounted again, or a clear error).
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Labels } from '../../src/containerd/labels.js';
import type { LowerLayer, RemoteLayers, RemoteMount } from '../../src/snapshotter/remote-layers.js';
import type { SnapshotterOptions } from '../../src/snapshotter/snapshotter.js';
import type { RemoteLayerRecord, SnapshotRecord } from '../../src/snapshotter/types.js';
import { expectCode, opt, S, startService, type Client, type Service } from './service.js';

interface MountCall {
  digest: string;
  mountpoint: string;
  lower: string[];
}

/** RemoteLayers over plain directories: counts mounts, and lets a test kill, fail or hold them. */
class FakeRemoteLayers implements RemoteLayers {
  readonly calls: MountCall[] = [];
  /** Mountpoint → digest of the layers "mounted" now. */
  readonly live = new Map<string, string>();
  /** Digests whose mount fails. */
  readonly failing = new Set<string>();
  /** check() throws (the server does not answer). */
  checkFails = false;
  /** Runs inside mount(), before it succeeds or fails. */
  duringMount?: (mountpoint: string, layer: RemoteLayerRecord) => Promise<void>;

  async resolve(labels: Record<string, string>): Promise<RemoteLayerRecord | undefined> {
    const digest = labels[Labels.criLayerDigest];
    return digest?.startsWith('sha256:dfb') ? { ref: 'reg/img:1', digest, size: 1234 } : undefined;
  }

  async mount(layer: RemoteLayerRecord, mountpoint: string, lower?: LowerLayer[]): Promise<RemoteMount> {
    this.calls.push({
      digest: layer.digest,
      mountpoint,
      lower: (lower ?? []).map((below) => below.layer.digest),
    });
    await this.duringMount?.(mountpoint, layer);
    if (this.failing.has(layer.digest)) throw new Error(`registry unreachable for ${layer.digest}`);
    await writeFile(join(mountpoint, `from-${layer.digest.slice(7)}`), 'r');
    this.live.set(mountpoint, layer.digest);
    return {
      check: async () => {
        if (this.checkFails) throw new Error('fuse manager does not answer');
        return this.live.get(mountpoint) === layer.digest;
      },
      unmount: async () => void this.live.delete(mountpoint),
    };
  }

  /** Mount calls for `digest`. */
  mountsOf(digest: string): MountCall[] {
    return this.calls.filter((call) => call.digest === digest);
  }
}

const labelsOf = (chain: string, digest: string): Record<string, string> => ({
  [Labels.snapshotRef]: chain,
  [Labels.criImageRef]: 'reg/img:1',
  [Labels.criLayerDigest]: digest,
  [Labels.criImageLayers]: 'sha256:dfb1,sha256:dfb2,sha256:plain',
});

let work: string;
let svc: Service;
let client: Client;
let remote: FakeRemoteLayers;

async function restart(opts: Omit<SnapshotterOptions, 'root'> = {}): Promise<void> {
  await svc.stop();
  svc = await startService(svc.root, svc.socket, { remote, checkTtlMs: 0, ...opts });
  client = svc.client;
}

const readMetadata = async (): Promise<{ snapshots: SnapshotRecord[] }> =>
  JSON.parse(await readFile(join(svc.root, 'metadata.json'), 'utf8'));
const snapshotDirs = async (): Promise<string[]> => (await readdir(join(svc.root, 'snapshots'))).sort();

/**
 * Two remote layers (sha256:dfb1, then sha256:dfb2 on it) committed as L1 and L2, both mounted (the second
 * mounts in the background: waited for here).
 */
async function remoteChain(): Promise<void> {
  await expectCode(client.prepare('extract-1 L1', '', labelsOf('L1', 'sha256:dfb1')), S.ALREADY_EXISTS);
  await expectCode(client.prepare('extract-2 L2', 'L1', labelsOf('L2', 'sha256:dfb2')), S.ALREADY_EXISTS);
  await until(() => remote.live.size === 2, 'the background mount of L2');
}

async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  await new Promise((r) => setTimeout(r, ms));
  return settled;
}

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await new Promise((r) => setTimeout(r, 10));
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

async function errorOf(call: Promise<unknown>): Promise<grpc.ServiceError> {
  const err = await call.then(
    () => undefined,
    (e: grpc.ServiceError) => e,
  );
  if (!err) throw new Error('expected the call to fail');
  return err;
}

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'dfnode-snapremote-'));
  remote = new FakeRemoteLayers();
  svc = await startService(join(work, 'root'), join(work, 'snap.sock'), { remote, checkTtlMs: 0 });
  client = svc.client;
});

afterEach(async () => {
  await svc.stop();
  await rm(work, { recursive: true, force: true });
});

describe('remote Prepare (containerd remote snapshot contract)', () => {
  it('answers ALREADY_EXISTS and commits under the target; a plain layer stays a normal snapshot', async () => {
    await expectCode(
      client.prepare('extract-1 sha256:c1', '', labelsOf('sha256:c1', 'sha256:dfb1')),
      S.ALREADY_EXISTS,
    );
    const info = await client.stat('sha256:c1');
    expect(info).toMatchObject({ kind: 'COMMITTED', parent: '' });
    expect(info.labels[Labels.snapshotRef]).toBe('sha256:c1');
    expect(info.labels[Labels.dfbLayer]).toBe('sha256:dfb1');
    await expectCode(client.stat('extract-1 sha256:c1'), S.NOT_FOUND);
    // containerd's lookup after ALREADY_EXISTS.
    expect(
      (await client.list(['labels."containerd.io/snapshot.ref"==sha256:c1,parent==""'])).map((i) => i.name),
    ).toEqual(['sha256:c1']);
    // Asked again: ALREADY_EXISTS without mounting again.
    await expectCode(
      client.prepare('extract-2 sha256:c1', '', labelsOf('sha256:c1', 'sha256:dfb1')),
      S.ALREADY_EXISTS,
    );
    expect(remote.calls).toHaveLength(1);
    const [mountpoint] = [...remote.live.keys()];
    // Not a DFB layer: a normal active snapshot that containerd fills and commits.
    const mounts = await client.prepare(
      'extract-3 sha256:c2',
      'sha256:c1',
      labelsOf('sha256:c2', 'sha256:plain'),
    );
    expect(mounts[0]!.type).toBe('overlay');
    expect(opt(mounts, 'lowerdir')).toBe(mountpoint);
    await client.commit('sha256:c2', 'extract-3 sha256:c2');
    // Restart: the remote layer is mounted again before serving.
    await svc.stop();
    expect(remote.live.size).toBe(0);
    await restart();
    expect(remote.live.size).toBe(1);
    await client.remove('sha256:c2');
    await client.remove('sha256:c1');
    expect(remote.live.size).toBe(0);
    expect(await snapshotDirs()).toEqual([]);
  });

  it('records the active snapshot before mounting, on the directory it mounts', async () => {
    let seen: SnapshotRecord | undefined;
    remote.duringMount = async (mountpoint) => {
      seen = (await readMetadata()).snapshots.find((s) => s.name === 'extract L1');
      expect(seen).toMatchObject({ kind: 2, remote: { digest: 'sha256:dfb1' } });
      expect(mountpoint).toBe(join(svc.root, 'snapshots', seen!.id, 'fs'));
      // The store is not locked while the layer mounts.
      expect((await client.stat('extract L1')).kind).toBe('ACTIVE');
      // A remote layer being prepared has no mounts and is not committed by anyone else.
      await expectCode(client.mounts('extract L1'), S.FAILED_PRECONDITION);
      await expectCode(client.commit('other', 'extract L1'), S.FAILED_PRECONDITION);
    };
    await expectCode(client.prepare('extract L1', '', labelsOf('L1', 'sha256:dfb1')), S.ALREADY_EXISTS);
    expect(seen).toBeDefined();
    const committed = (await readMetadata()).snapshots;
    expect(committed).toEqual([expect.objectContaining({ id: seen!.id, name: 'L1', kind: 3 })]);
  });

  it('removes the record and directory when the mount fails, then lets containerd unpack', async () => {
    remote.failing.add('sha256:dfb1');
    const mounts = await client.prepare('extract L1', '', labelsOf('L1', 'sha256:dfb1'));
    expect(remote.calls).toHaveLength(1);
    expect(mounts).toEqual([expect.objectContaining({ type: 'bind', options: ['rw', 'rbind'] })]);
    // What is left is containerd's ordinary active snapshot, in its own directory.
    const { snapshots } = await readMetadata();
    expect(snapshots).toHaveLength(1);
    expect(snapshots[0]).toMatchObject({ name: 'extract L1', kind: 2 });
    expect(snapshots[0]!.remote).toBeUndefined();
    expect(await snapshotDirs()).toEqual([snapshots[0]!.id]);
    expect(await readdir(mounts[0]!.source)).toEqual([]);
    await expectCode(client.stat('L1'), S.NOT_FOUND);
  });

  it('unmounts and removes the record when the commit fails after the mount', async () => {
    // The target appears (unpacked by another Prepare) while the layer mounts: the commit must fail.
    remote.duringMount = async () => {
      await client.prepare('unpack L1');
      await client.commit('L1', 'unpack L1');
    };
    await expectCode(client.prepare('extract L1', '', labelsOf('L1', 'sha256:dfb1')), S.ALREADY_EXISTS);
    expect(remote.calls).toHaveLength(1);
    expect(remote.live.size).toBe(0);
    const { snapshots } = await readMetadata();
    expect(snapshots.map((s) => s.name)).toEqual(['L1']);
    expect(snapshots[0]!.remote).toBeUndefined();
    expect(await snapshotDirs()).toEqual([snapshots[0]!.id]);
  });

  it('removes on start what a crash between record and commit left; Cleanup spares one in flight', async () => {
    await svc.stop();
    // As a process killed while mounting leaves it: the active record with its layer, and its directory.
    const abandoned: SnapshotRecord = {
      id: '7',
      name: 'extract L9',
      parent: '',
      kind: 2,
      labels: labelsOf('L9', 'sha256:dfb9'),
      created: Date.now(),
      updated: Date.now(),
      remote: { ref: 'reg/img:1', digest: 'sha256:dfb9', size: 1 },
    };
    await writeFile(
      join(svc.root, 'metadata.json'),
      JSON.stringify({ version: 1, nextId: 8, snapshots: [abandoned] }),
    );
    await mkdir(join(svc.root, 'snapshots', '7', 'fs'), { recursive: true });
    await restart();
    await expectCode(client.stat('extract L9'), S.NOT_FOUND);
    expect(await snapshotDirs()).toEqual([]);
    expect(remote.calls).toHaveLength(0);

    // Cleanup while a remote Prepare mounts: its record and directory stay, and it completes.
    remote.duringMount = async (mountpoint) => {
      await client.call('Cleanup', {});
      expect((await client.stat('extract L1')).kind).toBe('ACTIVE');
      expect(await readdir(mountpoint)).toEqual([]);
    };
    await expectCode(client.prepare('extract L1', '', labelsOf('L1', 'sha256:dfb1')), S.ALREADY_EXISTS);
    expect((await client.stat('L1')).kind).toBe('COMMITTED');
  });
});

describe('Cleanup concurrent with a slow remote Prepare', () => {
  it('leaves the snapshot being mounted alone: record, directory and mount survive, the Prepare commits', async () => {
    // The mount waits on a gate while containerd's Cleanup (and a plain Prepare/Remove) run meanwhile.
    let open!: () => void;
    const gate = new Promise<void>((resolveGate) => (open = resolveGate));
    let entered!: (mountpoint: string) => void;
    const inMount = new Promise<string>((resolveIn) => (entered = resolveIn));
    remote.duringMount = async (mountpoint) => {
      entered(mountpoint);
      await gate;
    };
    const prepare = errorOf(client.prepare('extract L1', '', labelsOf('L1', 'sha256:dfb1')));
    const mountpoint = await inMount;
    try {
      for (let i = 0; i < 3; i++) {
        await client.call('Cleanup', {});
        await client.prepare(`plain ${i}`);
        await client.remove(`plain ${i}`);
        await client.call('Cleanup', {});
      }
      expect((await client.stat('extract L1')).kind).toBe('ACTIVE');
      expect(await readdir(mountpoint)).toEqual([]);
    } finally {
      open();
    }
    expect(S[(await prepare).code]).toBe('ALREADY_EXISTS');
    expect((await client.stat('L1')).kind).toBe('COMMITTED');
    // The layer was written into the directory that was there all along, and that directory is L1's.
    expect(await readdir(mountpoint)).toEqual(['from-dfb1']);
    const { snapshots } = await readMetadata();
    expect(snapshots).toEqual([expect.objectContaining({ name: 'L1', kind: 3 })]);
    expect(mountpoint).toBe(join(svc.root, 'snapshots', snapshots[0]!.id, 'fs'));
    await client.call('Cleanup', {});
    expect(await snapshotDirs()).toEqual([snapshots[0]!.id]);
  });
});

describe('remote layers below a snapshot are checked when it is used', () => {
  it('Mounts, Prepare and View mount a dead lower layer again, with its own lower layers', async () => {
    await remoteChain();
    const [mp1, mp2] = [...remote.live.keys()];
    expect(remote.mountsOf('sha256:dfb2')[0]!.lower).toEqual(['sha256:dfb1']);
    const mounts = await client.prepare('ctr', 'L2');
    expect(opt(mounts, 'lowerdir')).toBe(`${mp2}:${mp1}`);

    // Unmounted behind our back: Mounts notices and mounts it again at the same place.
    remote.live.delete(mp1!);
    expect(await client.mounts('ctr')).toEqual(mounts);
    expect(remote.mountsOf('sha256:dfb1')).toHaveLength(2);
    expect(remote.live.get(mp1!)).toBe('sha256:dfb1');

    // The upper one is mounted again over the layers below it.
    remote.live.delete(mp2!);
    expect(await client.mounts('ctr')).toEqual(mounts);
    expect(remote.mountsOf('sha256:dfb2')).toEqual([
      { digest: 'sha256:dfb2', mountpoint: mp2, lower: ['sha256:dfb1'] },
      { digest: 'sha256:dfb2', mountpoint: mp2, lower: ['sha256:dfb1'] },
    ]);

    // Prepare and View on top of remote layers check them too.
    remote.live.delete(mp1!);
    await client.prepare('ctr2', 'L2');
    expect(remote.mountsOf('sha256:dfb1')).toHaveLength(3);
    remote.live.delete(mp2!);
    await client.view('ctr-view', 'L2');
    expect(remote.mountsOf('sha256:dfb2')).toHaveLength(3);

    // Live layers are not mounted again.
    const calls = remote.calls.length;
    await client.mounts('ctr');
    await client.mounts('ctr2');
    expect(remote.calls).toHaveLength(calls);
  });

  it('answers UNAVAILABLE naming the layer when mounting it again fails, and retries on the next call', async () => {
    await remoteChain();
    const mounts = await client.prepare('ctr', 'L2');
    const [mp1] = [...remote.live.keys()];
    remote.live.delete(mp1!);
    remote.failing.add('sha256:dfb1');
    const before = await snapshotDirs();

    const err = await errorOf(client.mounts('ctr'));
    expect(S[err.code]).toBe('UNAVAILABLE');
    expect(err.details).toContain('sha256:dfb1');
    expect(err.details).toContain('L1');
    expect(err.details).toContain('registry unreachable');
    // A Prepare or View on top fails the same way, and leaves nothing behind.
    expect(S[(await errorOf(client.prepare('ctr2', 'L2'))).code]).toBe('UNAVAILABLE');
    expect(S[(await errorOf(client.view('ctr-view', 'L1'))).code]).toBe('UNAVAILABLE');
    await expectCode(client.stat('ctr2'), S.NOT_FOUND);
    expect(await snapshotDirs()).toEqual(before);

    remote.failing.delete('sha256:dfb1');
    expect(await client.mounts('ctr')).toEqual(mounts);
    expect(remote.live.get(mp1!)).toBe('sha256:dfb1');
  });

  it('answers UNAVAILABLE without touching the mount when the check cannot tell', async () => {
    await remoteChain();
    await client.prepare('ctr', 'L2');
    const calls = remote.calls.length;
    remote.checkFails = true;
    const err = await errorOf(client.mounts('ctr'));
    expect(S[err.code]).toBe('UNAVAILABLE');
    expect(err.details).toMatch(/sha256:dfb1.*cannot be checked/);
    expect(remote.calls).toHaveLength(calls);
    expect(remote.live.size).toBe(2);
  });

  it('trusts a successful check for checkTtlMs', async () => {
    let clock = 1_000_000;
    await restart({ checkTtlMs: 5000, now: () => clock });
    await remoteChain();
    await client.prepare('ctr', 'L2');
    const [mp1] = [...remote.live.keys()];
    remote.live.delete(mp1!);
    clock += 4000;
    await client.mounts('ctr');
    expect(remote.mountsOf('sha256:dfb1')).toHaveLength(1);
    clock += 2000;
    await client.mounts('ctr');
    expect(remote.mountsOf('sha256:dfb1')).toHaveLength(2);
  });
});

describe('once a mount has worked, a remote Prepare answers before its layer is mounted', () => {
  /** L1 mounted (the first mount: before its Prepare answered); dfb2's mount held on a gate. */
  async function heldSecond(): Promise<{ open: () => void; mp2: () => string | undefined }> {
    await expectCode(client.prepare('extract-1 L1', '', labelsOf('L1', 'sha256:dfb1')), S.ALREADY_EXISTS);
    expect(remote.live.size).toBe(1); // the first remote Prepare answered after its mount
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let mp2: string | undefined;
    remote.duringMount = async (mountpoint, layer) => {
      if (layer.digest !== 'sha256:dfb2') return;
      mp2 = mountpoint;
      await gate;
    };
    await expectCode(client.prepare('extract-2 L2', 'L1', labelsOf('L2', 'sha256:dfb2')), S.ALREADY_EXISTS);
    return { open, mp2: () => mp2 };
  }

  it('commits it durably at once; a Prepare on top waits for the mount and gets both layers', async () => {
    const held = await heldSecond();
    expect((await client.stat('L2')).kind).toBe('COMMITTED');
    const { snapshots } = await readMetadata();
    expect(snapshots.map((s) => [s.name, s.kind])).toEqual([
      ['L1', 3],
      ['L2', 3],
    ]);
    await until(() => held.mp2() !== undefined, 'the mount of L2 to start');
    expect(remote.live.size).toBe(1);

    const ctr = client.prepare('ctr', 'L2');
    expect(await settledWithin(ctr, 150)).toBe(false);
    held.open();
    const mounts = await ctr;
    const mp1 = [...remote.live.keys()].find((mp) => remote.live.get(mp) === 'sha256:dfb1');
    expect(opt(mounts, 'lowerdir')).toBe(`${held.mp2()}:${mp1}`);
    expect(remote.mountsOf('sha256:dfb2')).toEqual([
      { digest: 'sha256:dfb2', mountpoint: held.mp2(), lower: ['sha256:dfb1'] },
    ]);
  });

  it('Remove waits for the mount in flight and unmounts it', async () => {
    const held = await heldSecond();
    await until(() => held.mp2() !== undefined, 'the mount of L2 to start');
    const removed = client.remove('L2');
    expect(await settledWithin(removed, 150)).toBe(false);
    held.open();
    await removed;
    expect([...remote.live.values()]).toEqual(['sha256:dfb1']);
    await expectCode(client.stat('L2'), S.NOT_FOUND);
  });

  it('a mount that fails in the background is tried again on use, and its error reaches the caller', async () => {
    await expectCode(client.prepare('extract-1 L1', '', labelsOf('L1', 'sha256:dfb1')), S.ALREADY_EXISTS);
    remote.failing.add('sha256:dfb2');
    await expectCode(client.prepare('extract-2 L2', 'L1', labelsOf('L2', 'sha256:dfb2')), S.ALREADY_EXISTS);
    await until(() => remote.mountsOf('sha256:dfb2').length === 1, 'the background mount');
    const err = await errorOf(client.prepare('ctr', 'L2'));
    expect(S[err.code]).toBe('UNAVAILABLE');
    expect(err.details).toContain('sha256:dfb2');
    expect(err.details).toContain('registry unreachable');
    expect(remote.mountsOf('sha256:dfb2')).toHaveLength(2);
    remote.failing.delete('sha256:dfb2');
    await client.prepare('ctr', 'L2');
    expect(remote.live.size).toBe(2);
  });

  it('a snapshotter whose first mount fails keeps mounting before it answers (containerd unpacks)', async () => {
    remote.failing.add('sha256:dfb1');
    const mounts = await client.prepare('extract-1 L1', '', labelsOf('L1', 'sha256:dfb1'));
    expect(mounts.length).toBe(1); // no ALREADY_EXISTS: an active snapshot for containerd to fill
    await expectCode(client.stat('L1'), S.NOT_FOUND);
  });
});

describe('a probe mount at start', () => {
  it('lets even the first remote Prepare answer before its layer is mounted', async () => {
    const probes: string[] = [];
    const probing = Object.assign(remote, {
      probe: async (mountpoint: string) => void probes.push(mountpoint),
    });
    await restart({ remote: probing });
    await until(() => probes.length === 1, 'the probe');
    expect(probes).toEqual([join(svc.root, 'probe')]);
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    remote.duringMount = () => gate;
    await expectCode(client.prepare('extract-1 L1', '', labelsOf('L1', 'sha256:dfb1')), S.ALREADY_EXISTS);
    expect(remote.live.size).toBe(0);
    open();
    await client.prepare('ctr', 'L1');
    expect(remote.live.size).toBe(1);
  });

  it('that fails changes nothing: the first remote Prepare mounts before it answers', async () => {
    const probing = Object.assign(remote, {
      probe: () => Promise.reject(new Error('fusermount: permission denied')),
    });
    await restart({ remote: probing });
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    remote.duringMount = () => gate;
    const prepared = client.prepare('extract-1 L1', '', labelsOf('L1', 'sha256:dfb1'));
    expect(await settledWithin(prepared, 150)).toBe(false);
    open();
    await expectCode(prepared, S.ALREADY_EXISTS);
    expect(remote.live.size).toBe(1);
  });
});
