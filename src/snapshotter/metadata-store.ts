import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { DfError } from '../errors.js';
import type { SnapshotRecord } from './types.js';

interface StateFile {
  version: 1;
  /** Next snapshot directory id (ids are never reused while the state file lives). */
  nextId: number;
  snapshots: SnapshotRecord[];
}

/**
 * The snapshotter's metadata: one JSON file holding every snapshot, replaced atomically on each mutation
 * (write a temporary file, fsync it, rename it over the old one, fsync the directory). A kill at any moment
 * leaves either the old or the new state, never a torn one. Callers create snapshot directories before the
 * record that names them and remove them after the record is gone, so a crash leaves at worst an orphan
 * directory, which the snapshotter removes on start and on Cleanup.
 *
 * Mutations must be serialized by the caller (the snapshotter holds its lock around each operation);
 * reads come from memory.
 */
export class MetadataStore {
  private state: StateFile = { version: 1, nextId: 1, snapshots: [] };
  private byName = new Map<string, SnapshotRecord>();

  constructor(readonly file: string) {}

  async load(): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true });
    let text: string | undefined;
    try {
      text = await readFile(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw DfError.from(err, `read ${this.file}`);
    }
    if (text !== undefined) {
      let parsed: StateFile;
      try {
        parsed = JSON.parse(text) as StateFile;
      } catch (err) {
        throw DfError.corrupt(
          `snapshotter metadata ${this.file} is not valid JSON (${(err as Error).message}); restore it or move it away`,
          {
            cause: err,
          },
        );
      }
      if (parsed.version !== 1 || !Array.isArray(parsed.snapshots))
        throw DfError.corrupt(`snapshotter metadata ${this.file}: unknown format`);
      this.state = parsed;
    }
    this.reindex();
    // Temporary files of an interrupted write.
    const dir = dirname(this.file);
    const base = this.file.slice(dir.length + 1);
    for (const n of await readdir(dir))
      if (n.startsWith(`.${base}.`) && n.endsWith('.tmp')) await rm(join(dir, n), { force: true });
  }

  private reindex(): void {
    this.byName = new Map(this.state.snapshots.map((s) => [s.name, s]));
  }

  get(name: string): SnapshotRecord | undefined {
    return this.byName.get(name);
  }

  all(): SnapshotRecord[] {
    return [...this.state.snapshots];
  }

  /** Ids of every snapshot in the metadata. */
  ids(): Set<string> {
    return new Set(this.state.snapshots.map((s) => s.id));
  }

  children(name: string): SnapshotRecord[] {
    return this.state.snapshots.filter((s) => s.parent === name);
  }

  /** Parents of `name`, nearest first. */
  parents(name: string): SnapshotRecord[] {
    const out: SnapshotRecord[] = [];
    let cur = this.byName.get(name)?.parent;
    while (cur) {
      const p = this.byName.get(cur);
      if (!p) throw DfError.internal(`snapshot metadata: parent ${cur} of ${name} is missing`);
      out.push(p);
      cur = p.parent;
    }
    return out;
  }

  /** Reserves the next directory id (persisted with the next committed update). */
  allocateId(): string {
    return String(this.state.nextId++);
  }

  /** Applies `fn` to a copy of the snapshot list and persists the result atomically; memory keeps the old state if that fails. */
  async update<T>(fn: (draft: SnapshotRecord[]) => T): Promise<T> {
    const draft = this.state.snapshots.map((s) => ({ ...s, labels: { ...s.labels } }));
    const result = fn(draft);
    const next: StateFile = { version: 1, nextId: this.state.nextId, snapshots: draft };
    await this.persist(next);
    this.state = next;
    this.reindex();
    return result;
  }

  private async persist(state: StateFile): Promise<void> {
    const dir = dirname(this.file);
    const tmp = join(dir, `.${this.file.slice(dir.length + 1)}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(JSON.stringify(state));
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.file);
      const dh = await open(dir, 'r');
      try {
        await dh.sync();
      } finally {
        await dh.close();
      }
    } catch (err) {
      await rm(tmp, { force: true }).catch(() => undefined);
      throw DfError.from(err, `write snapshotter metadata ${this.file}`);
    }
  }
}
