/**
 * Conformance suite for the snapshotter, over its unix socket with a client built from the same proto:
 * the contract containerd's snapshotter test suite checks (kinds, parents, mounts, commit/remove rules,
 * error codes), metadata surviving a restart, and a process killed mid-operation leaving a consistent state.
 * Mount checks really mount what the service returns (root only; skipped with a reason otherwise).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createSnapshotsClient } from '../../src/grpc/load-proto.js';
import { serveSnapshotter, type SnapshotterServer } from '../../src/snapshotter/grpc-service.js';
import { Snapshotter } from '../../src/snapshotter/snapshotter.js';
import type { RemoteLayers } from '../../src/snapshotter/remote-layers.js';
import { cliPath } from '../helpers/cli.js';
import { requireConditions } from '../helpers/require.js';

const S = grpc.status;
const mountReq = requireConditions({
  'root (kernel bind and overlay mounts)': process.getuid?.() === 0,
  'overlay filesystem':
    existsSync('/proc/filesystems') && readFileSync('/proc/filesystems', 'utf8').includes('overlay'),
});

interface Mount {
  type: string;
  source: string;
  options: string[];
}

/** A promise-based client over the gRPC stubs. */
class Client {
  readonly raw: grpc.Client & Record<string, any>;
  constructor(socket: string) {
    this.raw = createSnapshotsClient(socket) as grpc.Client & Record<string, any>;
  }
  call<T = any>(method: string, req: Record<string, unknown>): Promise<T> {
    return new Promise((resolve, reject) =>
      this.raw[method]!({ snapshotter: 'dfnode', ...req }, (err: grpc.ServiceError | null, res: T) =>
        err ? reject(err) : resolve(res),
      ),
    );
  }
  prepare(key: string, parent = '', labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.call('Prepare', { key, parent, labels }).then((r) => r.mounts);
  }
  view(key: string, parent = '', labels: Record<string, string> = {}): Promise<Mount[]> {
    return this.call('View', { key, parent, labels }).then((r) => r.mounts);
  }
  mounts(key: string): Promise<Mount[]> {
    return this.call('Mounts', { key }).then((r) => r.mounts);
  }
  commit(name: string, key: string, labels: Record<string, string> = {}): Promise<void> {
    return this.call('Commit', { name, key, labels });
  }
  remove(key: string): Promise<void> {
    return this.call('Remove', { key });
  }
  stat(key: string): Promise<any> {
    return this.call('Stat', { key }).then((r) => r.info);
  }
  update(info: Record<string, unknown>, paths?: string[]): Promise<any> {
    return this.call('Update', { info, update_mask: paths ? { paths } : null }).then((r) => r.info);
  }
  usage(key: string): Promise<{ size: number; inodes: number }> {
    return this.call('Usage', { key });
  }
  list(filters: string[] = []): Promise<any[]> {
    return new Promise((resolve, reject) => {
      const out: any[] = [];
      const s = this.raw.List({ snapshotter: 'dfnode', filters });
      s.on('data', (m: any) => out.push(...m.info));
      s.on('error', reject);
      s.on('end', () => resolve(out));
    });
  }
  close(): void {
    this.raw.close();
  }
}

async function expectCode(p: Promise<unknown>, code: grpc.status): Promise<void> {
  const err = await p.then(
    () => undefined,
    (e: grpc.ServiceError) => e,
  );
  expect(err, `expected gRPC status ${S[code]}`).toBeDefined();
  expect(S[err!.code], err!.details).toBe(S[code]);
}

async function sh(cmd: string, args: string[]): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    c.stderr.on('data', (d: Buffer) => (err += d.toString()));
    c.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${cmd} ${args.join(' ')}: ${err}`))));
  });
}

/** Mounts containerd.types.Mount list at target (as containerd's mount.All does). */
async function mountAll(mounts: Mount[], target: string): Promise<void> {
  await mkdir(target, { recursive: true });
  for (const m of mounts) {
    if (m.type === 'bind') {
      await sh('mount', ['--bind', m.source, target]);
      if (m.options.includes('ro')) await sh('mount', ['-o', 'remount,bind,ro', target]);
    } else await sh('mount', ['-t', m.type, m.source, '-o', m.options.join(','), target]);
  }
}

async function umount(target: string): Promise<void> {
  await sh('umount', [target]);
}

interface Service {
  root: string;
  socket: string;
  sn: Snapshotter;
  server: SnapshotterServer;
  client: Client;
  stop(): Promise<void>;
}

async function startService(root: string, socket: string, remote?: RemoteLayers): Promise<Service> {
  const sn = new Snapshotter({ root, remote });
  await sn.start();
  const server = await serveSnapshotter(sn, socket);
  const client = new Client(socket);
  return {
    root,
    socket,
    sn,
    server,
    client,
    stop: async () => {
      client.close();
      await server.stop();
      await sn.close();
    },
  };
}

let work: string;
let svc: Service;
let c: Client;

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'dfnode-snap-'));
  svc = await startService(join(work, 'root'), join(work, 'run', 'snap.sock'));
  c = svc.client;
});

afterEach(async () => {
  await svc.stop();
  await rm(work, { recursive: true, force: true });
});

describe('snapshotter conformance (snapshots.v1 over a unix socket)', () => {
  it('serves on a unix socket with mode 0660', async () => {
    const { stat } = await import('node:fs/promises');
    const st = await stat(svc.socket);
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o660);
  });

  it('prepare/commit/view chains have the overlay snapshotter mount shapes', async () => {
    const m0 = await c.prepare('a-active');
    expect(m0).toHaveLength(1);
    expect(m0[0]!.type).toBe('bind');
    expect(m0[0]!.options).toEqual(['rw', 'rbind']);
    const fsA = m0[0]!.source;
    expect(fsA.startsWith(svc.root)).toBe(true);

    await c.commit('a', 'a-active', { 'x.y': 'z' });
    const infoA = await c.stat('a');
    expect(infoA).toMatchObject({ name: 'a', parent: '', kind: 'COMMITTED', labels: { 'x.y': 'z' } });
    expect(Number(infoA.created_at.seconds)).toBeGreaterThan(1_600_000_000);
    await expectCode(c.stat('a-active'), S.NOT_FOUND);

    // One parent: an active snapshot is an overlay; a view is a read-only bind of the parent.
    const m1 = await c.prepare('b-active', 'a');
    expect(m1).toHaveLength(1);
    expect(m1[0]!.type).toBe('overlay');
    const opts = Object.fromEntries(
      m1[0]!.options.filter((o) => o.includes('=')).map((o) => o.split('=') as [string, string]),
    );
    expect(opts.lowerdir).toBe(fsA);
    expect(opts.upperdir).toMatch(/\/fs$/);
    expect(opts.workdir).toMatch(/\/work$/);
    const v1 = await c.view('a-view', 'a');
    expect(v1).toEqual([{ type: 'bind', source: fsA, target: '', options: ['ro', 'rbind'] }]);

    // Two parents: view is an overlay with lowerdir only, nearest first.
    await c.commit('b', 'b-active');
    const fsB = opts.upperdir!;
    const v2 = await c.view('b-view', 'b');
    expect(v2[0]!.type).toBe('overlay');
    expect(v2[0]!.options).toContain(`lowerdir=${fsB}:${fsA}`);
    expect(v2[0]!.options.some((o) => o.startsWith('upperdir='))).toBe(false);
    const m2 = await c.prepare('c-active', 'b');
    expect(m2[0]!.options).toContain(`lowerdir=${fsB}:${fsA}`);

    // View without a parent: read-only bind of an empty directory.
    const v0 = await c.view('empty-view');
    expect(v0[0]).toMatchObject({ type: 'bind', options: ['ro', 'rbind'] });

    expect(await c.mounts('c-active')).toEqual(m2);
    expect(await c.mounts('b-view')).toEqual(v2);
    await expectCode(c.mounts('a'), S.FAILED_PRECONDITION);
    expect((await c.stat('b-view')).kind).toBe('VIEW');
    expect((await c.stat('c-active')).kind).toBe('ACTIVE');
    expect((await c.stat('c-active')).parent).toBe('b');
  });

  it.skipIf(mountReq.skip)(
    'files written in an active snapshot are visible in a view of its commit (real mounts)',
    async () => {
      const mnt = join(work, 'mnt');
      await mountAll(await c.prepare('l1'), mnt);
      await writeFile(join(mnt, 'base.txt'), 'base');
      await mkdir(join(mnt, 'dir'));
      await writeFile(join(mnt, 'dir', 'gone.txt'), 'x');
      await umount(mnt);
      await c.commit('L1', 'l1');

      await mountAll(await c.prepare('l2', 'L1'), mnt);
      expect(await readFile(join(mnt, 'base.txt'), 'utf8')).toBe('base');
      await writeFile(join(mnt, 'top.txt'), 'top');
      await rm(join(mnt, 'dir', 'gone.txt'));
      await umount(mnt);
      await c.commit('L2', 'l2');

      await mountAll(await c.view('v', 'L2'), mnt);
      try {
        expect(await readFile(join(mnt, 'base.txt'), 'utf8')).toBe('base');
        expect(await readFile(join(mnt, 'top.txt'), 'utf8')).toBe('top');
        expect(await readdir(join(mnt, 'dir'))).toEqual([]);
        await expect(writeFile(join(mnt, 'nope'), 'x')).rejects.toThrow(/EROFS|read-only/i);
      } finally {
        await umount(mnt);
      }
      // A view of a single committed layer is a read-only bind.
      await mountAll(await c.view('v1', 'L1'), mnt);
      try {
        expect((await readdir(mnt)).sort()).toEqual(['base.txt', 'dir']);
        await expect(writeFile(join(mnt, 'nope'), 'x')).rejects.toThrow(/EROFS|read-only/i);
      } finally {
        await umount(mnt);
      }
      const u = await c.usage('L1');
      expect(u.inodes).toBe(4); // fs/, base.txt, dir/, dir/gone.txt
      expect(u.size).toBeGreaterThan(0);
    },
  );

  it('answers NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION and INVALID_ARGUMENT as containerd expects', async () => {
    await expectCode(c.stat('missing'), S.NOT_FOUND);
    await expectCode(c.mounts('missing'), S.NOT_FOUND);
    await expectCode(c.remove('missing'), S.NOT_FOUND);
    await expectCode(c.usage('missing'), S.NOT_FOUND);
    await expectCode(c.commit('x', 'missing'), S.NOT_FOUND);
    await expectCode(c.prepare('k', 'no-parent'), S.NOT_FOUND);
    await expectCode(c.view('k', 'no-parent'), S.NOT_FOUND);
    await expectCode(c.update({ name: 'missing', labels: { a: 'b' } }), S.NOT_FOUND);

    await c.prepare('act');
    await expectCode(c.prepare('act'), S.ALREADY_EXISTS);
    await expectCode(c.view('act'), S.ALREADY_EXISTS);
    // Active snapshots cannot be parents.
    await expectCode(c.prepare('child', 'act'), S.FAILED_PRECONDITION);
    await c.commit('done', 'act');
    await c.prepare('act2');
    await expectCode(c.commit('done', 'act2'), S.ALREADY_EXISTS);
    // Committed and view snapshots cannot be committed.
    await expectCode(c.commit('again', 'done'), S.FAILED_PRECONDITION);
    await c.view('vw', 'done');
    await expectCode(c.commit('vw-c', 'vw'), S.FAILED_PRECONDITION);
    await expectCode(c.prepare('vw-child', 'vw'), S.FAILED_PRECONDITION);

    await expectCode(c.prepare(''), S.INVALID_ARGUMENT);
    await expectCode(c.commit('', 'act2'), S.INVALID_ARGUMENT);
    await expectCode(c.prepare('big', '', { k: 'v'.repeat(5000) }), S.INVALID_ARGUMENT);
    await expectCode(c.update({ name: 'done', parent: 'x' }, ['parent']), S.INVALID_ARGUMENT);
    await expectCode(c.list(['name==']), S.INVALID_ARGUMENT);
  });

  it('removes only snapshots without children, and removes their directories', async () => {
    const m = await c.prepare('a1');
    const dir = join(m[0]!.source, '..');
    await c.commit('A', 'a1');
    await c.prepare('b1', 'A');
    await c.view('v1', 'A');
    await expectCode(c.remove('A'), S.FAILED_PRECONDITION);
    await c.remove('b1');
    await expectCode(c.remove('A'), S.FAILED_PRECONDITION);
    await c.remove('v1');
    await c.remove('A');
    await expectCode(c.stat('A'), S.NOT_FOUND);
    expect(existsSync(dir)).toBe(false);
    expect(await readdir(join(svc.root, 'snapshots'))).toEqual([]);
    // The name is free again.
    await c.prepare('a1');
  });

  it('updates labels with field masks and reports usage', async () => {
    await c.prepare('k', '', { keep: '1', drop: '2' });
    const before = await c.stat('k');
    await new Promise((r) => setTimeout(r, 15));
    let info = await c.update({ name: 'k', labels: { added: '3' } }, ['labels.added', 'labels.drop']);
    expect(info.labels).toEqual({ keep: '1', added: '3' });
    const upd = (t: any) => Number(t.seconds) * 1e3 + t.nanos / 1e6;
    expect(upd(info.updated_at)).toBeGreaterThan(upd(before.updated_at));
    expect(upd(info.created_at)).toBe(upd(before.created_at));
    info = await c.update({ name: 'k', labels: { only: 'x' } }, ['labels']);
    expect(info.labels).toEqual({ only: 'x' });
    info = await c.update({ name: 'k', labels: { none: 'y' } });
    expect(info.labels).toEqual({ none: 'y' });
    expect((await c.stat('k')).labels).toEqual({ none: 'y' });
    // kind/parent in the info are ignored when the mask names labels only.
    info = await c.update({ name: 'k', kind: 'COMMITTED', labels: { z: '1' } }, ['labels.z']);
    expect(info.kind).toBe('ACTIVE');

    const u0 = await c.usage('k');
    expect(u0.inodes).toBe(1);
    const fs = (await c.mounts('k'))[0]!.source;
    await writeFile(join(fs, 'f'), Buffer.alloc(100_000, 1));
    const u1 = await c.usage('k');
    expect(u1.inodes).toBe(2);
    expect(u1.size).toBeGreaterThanOrEqual(100_000);
    await c.commit('K', 'k');
    expect(await c.usage('K')).toEqual(u1);
  });

  it('walks with containerd filters (AND within, OR across)', async () => {
    await c.prepare('a-key', '', { 'containerd.io/snapshot.ref': 'sha256:aaa', 'a.b': 'v1' });
    await c.commit('A', 'a-key', {
      'containerd.io/snapshot.ref': 'sha256:aaa',
      'a.b': 'v1',
      'containerd.io/gc.root': 'x',
    });
    await c.prepare('b-key', 'A', { 'a.b': 'v2' });
    await c.view('c-view', 'A');
    const names = async (f: string[]) => (await c.list(f)).map((i) => i.name).sort();
    expect(await names([])).toEqual(['A', 'b-key', 'c-view']);
    expect(await names(['name==A'])).toEqual(['A']);
    expect(await names(['parent==A'])).toEqual(['b-key', 'c-view']);
    expect(await names(['parent=="A"'])).toEqual(['b-key', 'c-view']);
    expect(await names(['kind==committed'])).toEqual(['A']);
    expect(await names(['kind==active'])).toEqual(['b-key']);
    expect(await names(['kind==view'])).toEqual(['c-view']);
    expect(await names(['labels."a.b"==v2'])).toEqual(['b-key']);
    expect(await names(['labels."containerd.io/gc.root"'])).toEqual(['A']);
    expect(await names(['labels."a.b"!=v1'])).toEqual(['b-key', 'c-view']);
    expect(await names(['name~=^[ab]'])).toEqual(['b-key']);
    // containerd's lookup for a remote snapshot: the ref label and the parent, ANDed.
    expect(await names(['labels."containerd.io/snapshot.ref"==sha256:aaa,parent==""'])).toEqual(['A']);
    expect(await names(['labels."containerd.io/snapshot.ref"==sha256:aaa,parent=="x"'])).toEqual([]);
    expect(await names(['name==A', 'kind==view'])).toEqual(['A', 'c-view']);
    const a = (await c.list(['name==A']))[0];
    expect(a).toMatchObject({ kind: 'COMMITTED', parent: '', labels: { 'a.b': 'v1' } });
  });

  it('keeps its metadata across a restart and cleans orphan directories', async () => {
    await c.prepare('a');
    await c.commit('A', 'a', { l: '1' });
    const mB = await c.prepare('b', 'A');
    await writeFile(join(opt(mB, 'upperdir'), 'kept'), 'yes');
    await svc.stop();
    // A directory no snapshot owns (a crash between mkdir and the metadata write).
    await mkdir(join(svc.root, 'snapshots', '999', 'fs'), { recursive: true });
    svc = await startService(svc.root, svc.socket);
    c = svc.client;
    expect(await c.stat('A')).toMatchObject({ kind: 'COMMITTED', labels: { l: '1' } });
    expect(await c.mounts('b')).toEqual(mB);
    expect(await readFile(join(opt(mB, 'upperdir'), 'kept'), 'utf8')).toBe('yes');
    expect(existsSync(join(svc.root, 'snapshots', '999'))).toBe(false);
    // New ids do not collide with existing ones.
    await c.prepare('c', 'A');
    expect((await c.list()).map((i) => i.name).sort()).toEqual(['A', 'b', 'c']);
    // Cleanup removes orphans too.
    await mkdir(join(svc.root, 'snapshots', 'orphan'), { recursive: true });
    await c.call('Cleanup', {});
    expect(existsSync(join(svc.root, 'snapshots', 'orphan'))).toBe(false);
  });

  it('answers ALREADY_EXISTS and commits under the target for remote layers (fake remote seam)', async () => {
    await svc.stop();
    const mounted: string[] = [];
    const remote: RemoteLayers = {
      resolve: async (labels) =>
        labels['containerd.io/snapshot/cri.layer-digest']?.startsWith('sha256:dfb')
          ? { ref: 'reg/img:1', digest: labels['containerd.io/snapshot/cri.layer-digest']!, size: 1234 }
          : undefined,
      mount: async (_layer, mountpoint) => {
        mounted.push(mountpoint);
        await writeFile(join(mountpoint, 'from-remote'), 'r');
        return {
          check: async () => true,
          unmount: async () => void mounted.splice(mounted.indexOf(mountpoint), 1),
        };
      },
    };
    svc = await startService(svc.root, svc.socket, remote);
    c = svc.client;
    const labels = (chain: string, digest: string) => ({
      'containerd.io/snapshot.ref': chain,
      'containerd.io/snapshot/cri.image-ref': 'reg/img:1',
      'containerd.io/snapshot/cri.layer-digest': digest,
      'containerd.io/snapshot/cri.image-layers': 'sha256:dfb1,sha256:plain',
    });
    await expectCode(
      c.prepare('extract-1 sha256:c1', '', labels('sha256:c1', 'sha256:dfb1')),
      S.ALREADY_EXISTS,
    );
    const info = await c.stat('sha256:c1');
    expect(info).toMatchObject({ kind: 'COMMITTED', parent: '' });
    expect(info.labels['containerd.io/snapshot.ref']).toBe('sha256:c1');
    await expectCode(c.stat('extract-1 sha256:c1'), S.NOT_FOUND);
    // containerd's lookup after ALREADY_EXISTS.
    expect(
      (await c.list(['labels."containerd.io/snapshot.ref"==sha256:c1,parent==""'])).map((i) => i.name),
    ).toEqual(['sha256:c1']);
    // Asked again: ALREADY_EXISTS without mounting again.
    await expectCode(
      c.prepare('extract-2 sha256:c1', '', labels('sha256:c1', 'sha256:dfb1')),
      S.ALREADY_EXISTS,
    );
    expect(mounted).toHaveLength(1);
    // Not a DFB layer: a normal active snapshot that containerd fills and commits.
    const m = await c.prepare('extract-3 sha256:c2', 'sha256:c1', labels('sha256:c2', 'sha256:plain'));
    expect(m[0]!.type).toBe('overlay');
    expect(opt(m, 'lowerdir')).toBe(mounted[0]);
    await c.commit('sha256:c2', 'extract-3 sha256:c2');
    // Restart: the remote layer is mounted again before serving.
    await svc.stop();
    expect(mounted).toHaveLength(0);
    svc = await startService(svc.root, svc.socket, remote);
    c = svc.client;
    expect(mounted).toHaveLength(1);
    await c.remove('sha256:c2');
    await c.remove('sha256:c1');
    expect(mounted).toHaveLength(0);
    expect(await readdir(join(svc.root, 'snapshots'))).toEqual([]);
  });
});

function opt(m: Mount[], name: string): string {
  const o = m[0]!.options.find((x) => x.startsWith(name + '='));
  if (!o) throw new Error(`no ${name} in ${JSON.stringify(m)}`);
  return o.slice(name.length + 1);
}

describe('snapshotter killed mid-operation (dfnode run child, SIGKILL)', () => {
  let child: ChildProcess | undefined;
  afterAll(() => {
    if (child && child.exitCode === null) child.kill('SIGKILL');
  });

  it('leaves a consistent state that a new process serves', async () => {
    const root = join(work, 'kroot');
    const socket = join(work, 'k.sock');
    const startChild = async (): Promise<ChildProcess> => {
      const p = spawn(
        process.execPath,
        [
          cliPath('dfnode'),
          'run',
          '--cache-dir',
          join(work, 'cache'),
          '--state-dir',
          join(work, 'state'),
          '--metrics-address',
          '',
          '--snapshotter-root',
          root,
          '--snapshotter-socket',
          socket,
          '--no-fuse-manager',
        ],
        { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, DFNODE_LOG_LEVEL: 'warn' } },
      );
      let err = '';
      p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      await new Promise<void>((resolve, reject) => {
        p.stdout!.on('data', (d: Buffer) => d.toString().includes('dfnode running') && resolve());
        p.on('exit', (code) => reject(new Error(`dfnode run exited with ${code}: ${err}`)));
      });
      return p;
    };
    child = await startChild();
    const k = new Client(socket);
    await k.prepare('base-a');
    await k.commit('base', 'base-a');
    // Many operations in flight, then SIGKILL in the middle of them.
    const ops: Promise<unknown>[] = [];
    for (let i = 0; i < 200; i++) {
      ops.push(
        k
          .prepare(`k${i}`, 'base', { i: String(i) })
          .then(() => (i % 2 ? k.commit(`c${i}`, `k${i}`) : k.remove(`k${i}`)))
          .catch(() => undefined),
      );
    }
    await new Promise((r) => setTimeout(r, 40));
    const exited = new Promise((r) => child!.once('exit', r));
    child.kill('SIGKILL');
    await exited;
    await Promise.all(ops);
    k.close();

    const meta = JSON.parse(await readFile(join(root, 'metadata.json'), 'utf8'));
    expect(meta.version).toBe(1);
    // A fresh process (in-process here) starts from it: every record has its directory, no orphans remain.
    await svc.stop();
    svc = await startService(root, join(work, 'k2.sock'));
    c = svc.client;
    const all = await c.list();
    expect(all.map((i) => i.name)).toContain('base');
    const ids = new Set((meta.snapshots as Array<{ id: string }>).map((s) => s.id));
    const dirs = await readdir(join(root, 'snapshots'));
    expect(new Set(dirs)).toEqual(ids);
    for (const info of all) {
      if (info.kind === 'ACTIVE') {
        const m = await c.mounts(info.name);
        expect(existsSync(opt(m, 'upperdir'))).toBe(true);
        expect(existsSync(opt(m, 'workdir'))).toBe(true);
      }
    }
    // And it keeps working.
    await c.prepare('after', 'base');
    await c.commit('after-c', 'after');
    expect(existsSync(join(root, 'snapshots'))).toBe(true);
  });
});
