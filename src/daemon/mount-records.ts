import { randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { processRunning } from '../process.js';
import type { BlockedContainer } from './container-meter.js';
import type { BlockedFile } from './read-meter.js';

/** What `dfnode mount` records so that `dfnode umount` and `dfnode status` can find a mount. */
export interface MountRecord {
  id: string;
  pid: number;
  target: string;
  ref: string;
  manifest: string;
  layers: string[];
  started: string;
  stats?: {
    bytes: Record<string, number>;
    requests: Record<string, number>;
    verifyFailures: number;
    blockedMs: number;
    readErrors: number;
    /** Files and containers whose reads waited longest on the network (absent in records of older versions). */
    topBlockedFiles?: BlockedFile[];
    topBlockedContainers?: BlockedContainer[];
    unattributedBlockedMs?: number;
    updated: string;
  };
}

/** One JSON file per mount in the state directory, written atomically. */
export class MountRecords {
  constructor(readonly dir: string) {}

  async write(rec: MountRecord): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const tmp = join(this.dir, `.${rec.id}.${randomBytes(4).toString('hex')}.tmp`);
    await writeFile(tmp, JSON.stringify(rec));
    await rename(tmp, join(this.dir, `${rec.id}.json`));
  }

  async remove(id: string): Promise<void> {
    await rm(join(this.dir, `${id}.json`), { force: true });
  }

  async list(): Promise<Array<MountRecord & { alive: boolean }>> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch {
      return [];
    }
    const out = [];
    for (const n of names) {
      if (!n.endsWith('.json') || n.startsWith('.')) continue;
      try {
        const rec = JSON.parse(await readFile(join(this.dir, n), 'utf8')) as MountRecord;
        out.push({ ...rec, alive: processRunning(rec.pid) });
      } catch {
        // a torn record (crash while writing is impossible with rename, but be safe): ignore
      }
    }
    return out.sort((a, b) => a.started.localeCompare(b.started));
  }

  async findByTarget(target: string): Promise<(MountRecord & { alive: boolean }) | undefined> {
    return (await this.list()).find((r) => r.target === target && r.alive);
  }

  /** Removes records of processes that are gone, after `cleanup` undid their mounts. */
  async cleanupDead(cleanup: (rec: MountRecord) => Promise<void>): Promise<MountRecord[]> {
    const dead = (await this.list()).filter((r) => !r.alive);
    for (const r of dead) {
      await cleanup(r);
      await this.remove(r.id);
    }
    return dead;
  }
}
