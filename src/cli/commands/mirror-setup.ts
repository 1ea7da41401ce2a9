import { configFrom, type NodeFlags } from '../node-common.js';
import { removeContainerdHosts, writeContainerdHosts } from '../../mirror/containerd-hosts.js';

export interface MirrorSetupFlags extends NodeFlags {
  containerdDir: string;
  mirror?: string;
  registry?: string[];
  force?: boolean;
  remove?: boolean;
}

/** `dfnode mirror-setup`: points containerd's registry hosts configuration at this node's mirror. */
export async function mirrorSetupCommand(flags: MirrorSetupFlags): Promise<void> {
  const cfg = configFrom(flags);
  const listen = cfg.mirror.listen && cfg.mirror.listen !== 'off' ? cfg.mirror.listen : '127.0.0.1:65001';
  const mirror = flags.mirror ?? listen.replace(/^0\.0\.0\.0:/, '127.0.0.1:');
  const registries = flags.registry?.length ? flags.registry : ['_default'];
  for (const registry of registries) {
    if (flags.remove) {
      const removed = await removeContainerdHosts(flags.containerdDir, registry);
      process.stdout.write(`${registry}: ${removed ? 'removed' : 'nothing of dfnode to remove'}\n`);
      continue;
    }
    const r = await writeContainerdHosts(flags.containerdDir, mirror, { registry, force: flags.force });
    process.stdout.write(
      `${registry}: ${r} (${flags.containerdDir}/${registry}/hosts.toml → http://${mirror})\n`,
    );
  }
}
