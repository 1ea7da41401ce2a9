import { join } from 'node:path';
import { CacheManager, type BlobCacheInfo } from '../../cache/cache-manager.js';
import { MountRecords, type MountRecord } from '../../daemon/mount-records.js';
import { FuseManagerClient, managerPid } from '../../fusemanager/client.js';
import { fuseManagerPaths } from '../../fusemanager/protocol.js';
import { configFrom, fmt, type NodeFlags } from '../node-common.js';

/** `dfnode status`: mounts, cache fill per blob and bytes by source (text or --json). */
export async function statusCommand(flags: NodeFlags): Promise<void> {
  const cfg = configFrom(flags);
  const records = await new MountRecords(join(cfg.node.stateDir, 'mounts')).list();
  // With `dfnode run`, the fuse manager holds the cache: ask it (in-use flags and fetch counters).
  const mpid = managerPid(cfg.node.stateDir);
  let blobs: BlobCacheInfo[];
  let manager: { pid: number; stats: unknown } | undefined;
  if (mpid !== undefined) {
    const st = await new FuseManagerClient(fuseManagerPaths(cfg.node.stateDir).socket).status();
    blobs = st.blobs;
    manager = { pid: mpid, stats: st.stats };
  } else {
    const cache = CacheManager.fromConfig(cfg.cache, { lock: false });
    await cache.init();
    // This process does not hold the cache: a blob is in use when a live mount record names it.
    const used = new Set(records.filter((r) => r.alive).flatMap((r) => r.layers));
    blobs = cache.list().map((b) => ({ ...b, inUse: b.inUse || used.has(b.digest) }));
    await cache.close();
  }
  if (flags.json) {
    process.stdout.write(JSON.stringify({ mounts: records, blobs, manager }) + '\n');
    return;
  }
  const out: string[] = [];
  if (manager) {
    const st = manager.stats as MountRecord['stats'] | undefined;
    const by = Object.entries(st?.bytes ?? {})
      .filter(([, v]) => v > 0)
      .map(([k, v]) => `${k} ${fmt(v)}`)
      .join(', ');
    out.push(`fuse manager pid ${manager.pid}; bytes by source: ${by || 'none yet'}`);
    if (st) out.push(...blockedLines(st, '  '));
  }
  out.push(`mounts (${records.length}):`);
  for (const r of records) {
    out.push(`  ${r.target}  ${r.ref}  pid ${r.pid}${r.alive ? '' : ' (dead)'}  ${r.layers.length} layers`);
    if (r.stats) {
      const by = Object.entries(r.stats.bytes)
        .filter(([, v]) => v > 0)
        .map(([k, v]) => `${k} ${fmt(v)}`)
        .join(', ');
      out.push(`    bytes by source: ${by || 'none yet'}; verification failures ${r.stats.verifyFailures}`);
      out.push(...blockedLines(r.stats, '    '));
    }
  }
  out.push(
    `cache ${cfg.cache.dir} (${blobs.length} blobs, ${fmt(blobs.reduce((a, b) => a + b.filledBytes, 0))}):`,
  );
  for (const b of blobs)
    out.push(
      `  ${b.digest.slice(0, 19)}  ${((100 * b.filledBytes) / Math.max(1, b.size)).toFixed(1).padStart(5)}% of ${fmt(b.size)}${
        b.complete ? ' complete' : ''
      }${b.inUse ? ' in use' : ''}`,
    );
  process.stdout.write(out.join('\n') + '\n');
}

const secs = (ms: number) => `${(ms / 1000).toFixed(3)} s`;

/** The files and containers whose reads waited longest on the network. */
export function blockedLines(st: NonNullable<MountRecord['stats']>, indent: string): string[] {
  const out: string[] = [];
  const files = st.topBlockedFiles ?? [];
  const ctrs = st.topBlockedContainers ?? [];
  out.push(`${indent}reads blocked on the network: ${secs(st.blockedMs)} in total`);
  if (files.length) {
    out.push(`${indent}top blocked files (blocked, reads, layer, path):`);
    for (const f of files)
      out.push(
        `${indent}  ${secs(f.blockedMs).padStart(10)}  ${String(f.reads).padStart(6)}  ${f.layer.slice(7, 19)}  ${f.path}`,
      );
  }
  if (ctrs.length) {
    out.push(`${indent}top blocked containers (blocked, reads, container, image, pod):`);
    for (const c of ctrs) {
      const pod = c.pod
        ? `${c.namespace}/${c.pod}${c.container_name ? '/' + c.container_name : ''}`
        : c.namespace;
      out.push(
        `${indent}  ${secs(c.blockedMs).padStart(10)}  ${String(c.reads).padStart(6)}  ${c.container.slice(0, 24)}  ${c.image}  ${pod}`,
      );
    }
  }
  if (st.unattributedBlockedMs)
    out.push(`${indent}blocked reads of no known container: ${secs(st.unattributedBlockedMs)}`);
  return out;
}
