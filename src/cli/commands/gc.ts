import { join } from 'node:path';
import { CacheManager } from '../../cache/cache-manager.js';
import { MountRecords } from '../../daemon/mount-records.js';
import { FuseManagerClient, managerPid } from '../../fusemanager/client.js';
import { fuseManagerPaths } from '../../fusemanager/protocol.js';
import { configFrom, fmt, type NodeFlags } from '../node-common.js';

/** `dfnode gc`: evicts cached blobs that no mount uses, through whichever process holds the cache. */
export async function gcCommand(flags: NodeFlags): Promise<void> {
  const cfg = configFrom(flags);
  if (managerPid(cfg.node.stateDir) !== undefined) {
    const r = await new FuseManagerClient(fuseManagerPaths(cfg.node.stateDir).socket).gc();
    process.stdout.write(
      `evicted ${r.evicted.length} blobs, freed ${fmt(r.freedBytes)} (via the fuse manager)\n`,
    );
    return;
  }
  const records = (await new MountRecords(join(cfg.node.stateDir, 'mounts')).list()).filter((r) => r.alive);
  if (records.length) {
    // A running dfnode holds the cache: ask each to collect (its in-use blobs stay).
    for (const r of records) process.kill(r.pid, 'SIGUSR2');
    process.stdout.write(`asked ${records.length} running dfnode process(es) to evict unused blobs\n`);
    return;
  }
  const cache = CacheManager.fromConfig(cfg.cache);
  await cache.init();
  try {
    const r = await cache.gc();
    process.stdout.write(`evicted ${r.evicted.length} blobs, freed ${fmt(r.freedBytes)}\n`);
  } finally {
    await cache.close();
  }
}
