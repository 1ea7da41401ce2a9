import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { MountRecords } from '../../daemon/mount-records.js';
import { DfError } from '../../errors.js';
import { lazyUnmount } from '../../fuse/mounts.js';
import { processRunning } from '../../process.js';
import { configFrom, type NodeFlags } from '../node-common.js';

/** `dfnode umount DIR`: stops the dfnode mount serving DIR, then removes what it left. */
export async function umountCommand(dir: string, flags: NodeFlags): Promise<void> {
  const cfg = configFrom(flags);
  const target = resolve(dir);
  const records = new MountRecords(join(cfg.node.stateDir, 'mounts'));
  const rec = (await records.list()).find((r) => r.target === target);
  if (!rec) throw DfError.notFound(`${target} is not a dfnode mount (see dfnode status)`);
  if (rec.alive) {
    process.kill(rec.pid, 'SIGTERM');
    const deadline = Date.now() + 30_000;
    while (processRunning(rec.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    if (processRunning(rec.pid))
      throw DfError.timeout(`dfnode mount (pid ${rec.pid}) did not stop within 30 s`);
  }
  // The serving process is gone: remove whatever it could not.
  await lazyUnmount(target).catch(() => undefined);
  await rm(join(cfg.node.stateDir, 'mnt', rec.id), { recursive: true, force: true }).catch(() => undefined);
  await records.remove(rec.id);
  process.stdout.write(`unmounted ${target}\n`);
}
