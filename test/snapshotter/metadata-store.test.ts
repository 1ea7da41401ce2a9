/**
 * The metadata store's transactions: serialized, all or nothing, persisted before they resolve, read-only
 * when asked, and the state on disk always a whole one.
 */
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DfError } from '../../src/errors.js';
import { MetadataStore } from '../../src/snapshotter/metadata-store.js';
import { Kind } from '../../src/snapshotter/types.js';

let work: string;
let file: string;
let store: MetadataStore;

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'dfnode-meta-'));
  file = join(work, 'metadata.json');
  store = new MetadataStore(file);
  await store.load();
});

afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

const names = (target: MetadataStore): Promise<string[]> =>
  target.withTransaction(false, (tx) => {
    const out: string[] = [];
    tx.walk((snapshot) => out.push(snapshot.name));
    return out;
  });

const codeOf = async (call: Promise<unknown>): Promise<string | undefined> =>
  call.then(
    () => undefined,
    (err: unknown) => (err instanceof DfError ? err.code : String(err)),
  );

describe('MetadataStore transactions', () => {
  it('persists a writable transaction before it resolves; a new store reads it back', async () => {
    const created = await store.withTransaction(true, (tx) => {
      const base = tx.createSnapshot(Kind.Active, 'a', '', { l: '1' });
      tx.commitActive('a', 'A', { labels: { l: '2' }, usage: { size: 10, inodes: 2 } });
      tx.createSnapshot(Kind.View, 'v', 'A', {});
      return base.snapshot;
    });
    expect(created).toMatchObject({ id: '1', name: 'a', kind: Kind.Active });
    const again = new MetadataStore(file);
    await again.load();
    expect(await names(again)).toEqual(['A', 'v']);
    const committed = await again.withTransaction(false, (tx) => tx.getInfo('A'));
    expect(committed).toMatchObject({
      id: '1',
      kind: Kind.Committed,
      labels: { l: '2' },
      usage: { size: 10 },
    });
    // Ids are never reused.
    const next = await again.withTransaction(true, (tx) => tx.createSnapshot(Kind.Active, 'b', 'A', {}));
    expect(next.snapshot.id).toBe('3');
    expect(next.parents.map((parent) => parent.name)).toEqual(['A']);
  });

  it('drops every change of a transaction whose function throws', async () => {
    await store.withTransaction(true, (tx) => void tx.createSnapshot(Kind.Active, 'keep', '', {}));
    const before = await readFile(file, 'utf8');
    const err = await codeOf(
      store.withTransaction(true, (tx) => {
        tx.createSnapshot(Kind.Active, 'gone', '', {});
        tx.remove('keep');
        tx.createSnapshot(Kind.Active, 'gone', '', {}); // ALREADY_EXISTS
      }),
    );
    expect(err).toBe('ALREADY_EXISTS');
    expect(await names(store)).toEqual(['keep']);
    expect(await readFile(file, 'utf8')).toBe(before);
    // The id of the dropped snapshot is handed out again (no directory was ever recorded with it).
    const next = await store.withTransaction(true, (tx) => tx.createSnapshot(Kind.Active, 'n', '', {}));
    expect(next.snapshot.id).toBe('2');
  });

  it('keeps the old state when persisting fails, and leaves no temporary file', async () => {
    await store.withTransaction(true, (tx) => void tx.createSnapshot(Kind.Active, 'keep', '', {}));
    // rename() cannot replace a directory: the write fails after the temporary file is made.
    await rm(file);
    await mkdir(file);
    expect(await codeOf(store.withTransaction(true, (tx) => void tx.remove('keep')))).toBeDefined();
    expect(await names(store)).toEqual(['keep']);
    expect((await readdir(work)).sort()).toEqual(['metadata.json']);
  });

  it('refuses changes in a read-only transaction and use after the end', async () => {
    expect(
      await codeOf(store.withTransaction(false, (tx) => tx.createSnapshot(Kind.Active, 'a', '', {}))),
    ).toBe('INTERNAL');
    let kept: { lookup(name: string): unknown } | undefined;
    await store.withTransaction(false, (tx) => void (kept = tx));
    expect(() => kept!.lookup('a')).toThrow(/after it ended/);
    expect(await names(store)).toEqual([]);
  });

  it('runs transactions one at a time, in call order', async () => {
    const log: string[] = [];
    const slow = (name: string, ms: number) =>
      store.withTransaction(true, async (tx) => {
        log.push(`${name}:start`);
        await new Promise((resolve) => setTimeout(resolve, ms));
        tx.createSnapshot(Kind.Active, name, '', {});
        log.push(`${name}:end`);
      });
    await Promise.all([
      slow('one', 30),
      slow('two', 1),
      store.withTransaction(false, () => void log.push('read')),
    ]);
    expect(log).toEqual(['one:start', 'one:end', 'two:start', 'two:end', 'read']);
  });

  it('hands out copies: changing a record changes nothing stored', async () => {
    const { snapshot } = await store.withTransaction(true, (tx) =>
      tx.createSnapshot(Kind.Active, 'a', '', { l: '1' }),
    );
    snapshot.labels.l = 'changed';
    snapshot.name = 'renamed';
    expect(await store.withTransaction(false, (tx) => tx.getInfo('a').labels)).toEqual({ l: '1' });
  });

  it('removes temporary files of an interrupted write on load, and refuses a corrupt file', async () => {
    await writeFile(join(work, '.metadata.json.abcd1234.tmp'), '{"version":1');
    await new MetadataStore(file).load();
    expect(await readdir(work)).toEqual([]);
    await writeFile(file, '{"version":1,');
    expect(await codeOf(new MetadataStore(file).load())).toBe('CORRUPT');
    await writeFile(file, '{"version":2,"nextId":1,"snapshots":[]}');
    expect(await codeOf(new MetadataStore(file).load())).toBe('CORRUPT');
  });
});
