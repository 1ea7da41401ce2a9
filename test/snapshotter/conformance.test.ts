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
import type * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cliPath } from '../helpers/cli.js';
import { requireConditions } from '../helpers/require.js';
import { Client, expectCode, mountAll, opt, S, startService, umount, type Service } from './service.js';

const mountReq = requireConditions({
  'root (kernel bind and overlay mounts)': process.getuid?.() === 0,
  'overlay filesystem':
    existsSync('/proc/filesystems') && readFileSync('/proc/filesystems', 'utf8').includes('overlay'),
});

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

  it('refuses what the metadata store forbids with containerd codes, changing nothing', async () => {
    await c.prepare('base-a');
    await c.commit('base', 'base-a');
    await c.prepare('act', 'base');
    await c.view('vw', 'base');
    const metadata = () => readFile(join(svc.root, 'metadata.json'), 'utf8');
    const before = { meta: await metadata(), dirs: (await readdir(join(svc.root, 'snapshots'))).sort() };
    const max = 'k'.repeat(10) + 'v'.repeat(4096 - 10);
    const refusals: Array<[string, () => Promise<unknown>, grpc.status]> = [
      // Commit turns only an active snapshot into a committed one, under a new name.
      ['commit of a committed snapshot', () => c.commit('again', 'base'), S.FAILED_PRECONDITION],
      ['commit of a view', () => c.commit('vw-c', 'vw'), S.FAILED_PRECONDITION],
      ['commit of a missing key', () => c.commit('x', 'missing'), S.NOT_FOUND],
      ['commit under a taken name', () => c.commit('base', 'act'), S.ALREADY_EXISTS],
      ['commit under an active key', () => c.commit('vw', 'act'), S.ALREADY_EXISTS],
      // A parent exists and is committed.
      ['prepare on an active parent', () => c.prepare('p1', 'act'), S.FAILED_PRECONDITION],
      ['prepare on a view parent', () => c.prepare('p2', 'vw'), S.FAILED_PRECONDITION],
      ['view on an active parent', () => c.view('v1', 'act'), S.FAILED_PRECONDITION],
      ['prepare on a missing parent', () => c.prepare('p3', 'missing'), S.NOT_FOUND],
      // Keys and names are unique across kinds.
      ['prepare of an active key', () => c.prepare('act'), S.ALREADY_EXISTS],
      ['prepare of a committed name', () => c.prepare('base'), S.ALREADY_EXISTS],
      ['view of a view key', () => c.view('vw', 'base'), S.ALREADY_EXISTS],
      // Remove only without children.
      ['remove with children', () => c.remove('base'), S.FAILED_PRECONDITION],
      // Label size limit (key + value at most 4096 bytes), empty keys and names.
      ['prepare with a long label', () => c.prepare('big', '', { [max]: 'x' }), S.INVALID_ARGUMENT],
      ['view with a long label', () => c.view('big', '', { k: 'v'.repeat(4096) }), S.INVALID_ARGUMENT],
      ['commit with a long label', () => c.commit('big', 'act', { k: 'v'.repeat(5000) }), S.INVALID_ARGUMENT],
      [
        'update to a long label',
        () => c.update({ name: 'act', labels: { k: 'v'.repeat(5000) } }, ['labels.k']),
        S.INVALID_ARGUMENT,
      ],
      ['empty label key', () => c.prepare('nokey', '', { '': 'x' }), S.INVALID_ARGUMENT],
      ['empty key', () => c.view(''), S.INVALID_ARGUMENT],
      ['empty commit name', () => c.commit('', 'act'), S.INVALID_ARGUMENT],
      [
        'update of an immutable field',
        () => c.update({ name: 'act', parent: '' }, ['parent']),
        S.INVALID_ARGUMENT,
      ],
    ];
    for (const [what, call, code] of refusals) {
      const err = await call().then(
        () => undefined,
        (e: grpc.ServiceError) => e,
      );
      expect(err, `${what}: expected ${S[code]}`).toBeDefined();
      expect(S[err!.code], `${what}: ${err!.details}`).toBe(S[code]);
    }
    expect(await metadata()).toBe(before.meta);
    expect((await readdir(join(svc.root, 'snapshots'))).sort()).toEqual(before.dirs);
    // The limit is inclusive: key + value of exactly 4096 bytes is a valid label.
    await c.prepare('at-limit', '', { [max]: '' });
    expect((await c.stat('at-limit')).labels[max]).toBe('');
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
});

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
