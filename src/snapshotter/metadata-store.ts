import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DfError } from '../errors.js';
import { MetadataTransaction, type MetadataState } from './metadata-transaction.js';

/**
 * The snapshotter's metadata, after containerd's snapshots/storage metastore: every read and change goes
 * through `withTransaction`, which holds the store's lock for the whole function, so a transaction is also
 * the snapshotter's critical section (directories are made and removed inside it). The rules are the
 * transaction's (see MetadataTransaction).
 *
 * One JSON file holds every snapshot, replaced atomically when a writable transaction changed something
 * (write a temporary file, fsync it, rename it over the old one, fsync the directory). A kill at any moment
 * leaves either the old or the new state, never a torn one. Callers create snapshot directories before the
 * record that names them is committed and remove them after the record is gone, so a crash leaves at worst
 * an orphan directory, which the snapshotter removes on start and on Cleanup.
 */
export class MetadataStore {
  private state: MetadataState = { version: 1, nextId: 1, snapshots: [] };
  private lockChain: Promise<unknown> = Promise.resolve();

  constructor(readonly file: string) {}

  private locked<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.lockChain.then(fn, fn);
    this.lockChain = result.catch(() => undefined);
    return result;
  }

  /**
   * Runs `fn` alone (no other transaction runs meanwhile) with a transaction over the current state. When
   * `writable` and `fn` resolves, its changes are persisted before withTransaction resolves; when `fn`
   * throws, or persisting fails, they are dropped and the state stays as it was.
   */
  withTransaction<T>(writable: boolean, fn: (tx: MetadataTransaction) => T | Promise<T>): Promise<T> {
    return this.locked(async () => {
      const tx = new MetadataTransaction(this.state, writable);
      let result: T;
      try {
        result = await fn(tx);
      } catch (err) {
        tx.abandon();
        throw err;
      }
      const next = tx.finish();
      if (next) {
        await this.persist(next);
        this.state = next;
      }
      return result;
    });
  }

  /** Reads the metadata file (none yet: empty) and removes temporary files of an interrupted write. */
  load(): Promise<void> {
    return this.locked(async () => {
      await mkdir(dirname(this.file), { recursive: true });
      let text: string | undefined;
      try {
        text = await readFile(this.file, 'utf8');
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw DfError.from(err, `read ${this.file}`);
      }
      if (text !== undefined) this.state = this.parse(text);
      const dir = dirname(this.file);
      const base = this.file.slice(dir.length + 1);
      for (const name of await readdir(dir))
        if (name.startsWith(`.${base}.`) && name.endsWith('.tmp')) await rm(join(dir, name), { force: true });
    });
  }

  private parse(text: string): MetadataState {
    let parsed: MetadataState;
    try {
      parsed = JSON.parse(text) as MetadataState;
    } catch (err) {
      throw DfError.corrupt(
        `snapshotter metadata ${this.file} is not valid JSON (${(err as Error).message}); restore it or move it away`,
        { cause: err },
      );
    }
    if (parsed?.version !== 1 || !Array.isArray(parsed.snapshots) || !Number.isInteger(parsed.nextId))
      throw DfError.corrupt(`snapshotter metadata ${this.file}: unknown format; restore it or move it away`);
    return parsed;
  }

  private async persist(state: MetadataState): Promise<void> {
    const dir = dirname(this.file);
    const tmp = join(dir, `.${this.file.slice(dir.length + 1)}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      const file = await open(tmp, 'w', 0o600);
      try {
        await file.writeFile(JSON.stringify(state));
        await file.sync();
      } finally {
        await file.close();
      }
      await rename(tmp, this.file);
      const dirHandle = await open(dir, 'r');
      try {
        await dirHandle.sync();
      } finally {
        await dirHandle.close();
      }
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      throw DfError.from(err, `write snapshotter metadata ${this.file}`);
    }
  }
}
